#!/usr/bin/env bash
# Load test of the origin-side middleware: a trivial handler in actix-web
# and in axum, bare and behind Portcullis (AccessGuard / AccessLayer),
# measured in the same run with wrk (or oha) on 127.0.0.1 with one
# repeated valid token. Prints requests/s and p50/p99 latency per case and
# the middleware's throughput cost against the bare app.
#
#   benches/load/integrations.sh
#
# Settings (environment): DURATION (10s), CONNECTIONS (64), THREADS (1,
# load-tool threads), WORKERS (1, server threads), ROUNDS (3; bare and
# guarded alternate within a round so drift hits both alike), MODES
# ("bare guard"; add "noop" for axum behind a pass-through layer, what any
# layer costs there; "guard@base" runs the guarded app from the build in
# BASELINE_BIN, e.g. an older commit's target/release/examples, in the same
# rounds), APPS ("actix axum"), PIN (1 pins the server to CPU 0 and the
# load tool to CPU 1 with taskset; default 0).
#
# CALLGRIND=1 instead counts instructions, which other work on the machine
# does not disturb: each app and mode runs under valgrind's callgrind, is
# warmed up (wrk for CG_WARMUP, 3s), its counters are zeroed
# (callgrind_control -z), then wrk -t1 -c4 runs for CG_DURATION (10s) with
# the same token and the counters are dumped; prints instructions per
# request (user space: the server's code and libraries, not the kernel)
# and keeps the profiles in CG_DIR (a temporary directory) for
# callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18480}
MODES=${MODES:-bare guard}
APPS=${APPS:-actix axum}
CALLGRIND=${CALLGRIND:-0}
PIN=${PIN:-0}
server_pin=() tool_pin=()
if [ "$PIN" = 1 ]; then server_pin=(taskset -c 0) tool_pin=(taskset -c 1); fi
CG_WARMUP=${CG_WARMUP:-3s}
CG_DURATION=${CG_DURATION:-10s}
HEADER=cf-access-jwt-assertion

tool=""
if command -v wrk >/dev/null 2>&1; then
    tool=wrk
elif command -v oha >/dev/null 2>&1; then
    tool=oha
elif command -v apt-get >/dev/null 2>&1 && { apt-get install -y -qq wrk >/dev/null 2>&1 || sudo -n apt-get install -y -qq wrk >/dev/null 2>&1; }; then
    tool=wrk
else
    cargo install oha --locked
    tool=oha
fi
echo "load tool: $tool; duration $DURATION, $CONNECTIONS connections, $THREADS tool thread(s), $WORKERS server worker(s), $ROUNDS rounds, modes: $MODES, pinned: $PIN" >&2

cargo build --release --quiet -p portcullis-actix --example actix_bench -p portcullis-tower --example axum_bench
bin=target/release/examples

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Latency value with unit (us, ms, s) -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "ns") n /= 1000000
        printf "%.3f", n }'
}

# Server CPU microseconds per request: independent of how much CPU the
# load tool, sharing the machine, leaves to the server.
cpu_per_request() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1000000 / hz / n; else print "nan" }'
}

# CPU time (user + system, in clock ticks) the server has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Of which user time.
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }

# start_server <app> <mode> [wrapper...]: starts it in the background
# (server_pid), waits until it answers, sets token.
start_server() {
    local app=$1 mode=$2 token_file="$work/token" dir=$bin
    shift 2
    if [ "${mode#*@}" = base ]; then
        dir=${BASELINE_BIN:?"mode $mode needs BASELINE_BIN"}
        mode=${mode%@base}
    fi
    rm -f "$token_file"
    BENCH_WORKERS=$WORKERS "$@" "$dir/${app}_bench" "127.0.0.1:$PORT" "$mode" "$token_file" >/dev/null 2>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 1 300); do
        if [ -s "$token_file" ] && curl -s -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; then break; fi
        sleep 0.1
    done
    token=$(cat "$token_file" 2>/dev/null || true)
    # The guarded app must accept the token and refuse its absence, or
    # we would be measuring the rejection path.
    local with without
    with=$(curl -s -o /dev/null -w '%{http_code}' -H "$HEADER: $token" "http://127.0.0.1:$PORT/")
    without=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")
    if [ "$with" != 200 ] || { [ "$mode" = guard ] && [ "$without" != 401 ]; }; then
        echo "error: $app/$mode answered $with with the token and $without without" >&2
        tail -n 20 "$work/server.log" >&2
        exit 1
    fi
}

stop_server() {
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

# run_case <app> <mode>: prints "rps p50_ms p99_ms server_cpu_us_per_request
# server_user_cpu_us_per_request".
run_case() {
    local app=$1 mode=$2 out="$work/out"
    start_server "$app" "$mode" "${server_pin[@]}"
    local ticks_before ticks_after user_before user_after
    ticks_before=$(cpu_ticks "$server_pid")
    user_before=$(user_ticks "$server_pid")
    if [ "$tool" = wrk ]; then
        "${tool_pin[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$HEADER: $token" "http://127.0.0.1:$PORT/" >"$out"
        if grep -q 'Non-2xx' "$out"; then
            echo "error: $app/$mode: non-2xx responses under load" >&2; cat "$out" >&2; exit 1
        fi
        local rps p50 p99
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        p50=$(awk '$1 == "50%" {print $2}' "$out")
        p99=$(awk '$1 == "99%" {print $2}' "$out")
        requests=$(awk '/requests in/ {print $1}' "$out")
        ticks_after=$(cpu_ticks "$server_pid")
        user_after=$(user_ticks "$server_pid")
        echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(cpu_per_request "$ticks_before" "$ticks_after" "$requests") $(cpu_per_request "$user_before" "$user_after" "$requests")"
    else
        "${tool_pin[@]}" oha --no-tui -j -z "$DURATION" -c "$CONNECTIONS" -H "$HEADER: $token" "http://127.0.0.1:$PORT/" >"$out"
        python3 - "$out" >"$work/parsed" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
if set(codes) - {"200"}:
    sys.exit(f"non-200 responses under load: {codes}")
p = d["latencyPercentiles"]
print(f'{d["summary"]["requestsPerSec"]:.2f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {sum(codes.values())}')
PY
        read -r rps p50 p99 requests <<<"$(tail -n1 "$work/parsed")"
        ticks_after=$(cpu_ticks "$server_pid")
        user_after=$(user_ticks "$server_pid")
        echo "$rps $p50 $p99 $(cpu_per_request "$ticks_before" "$ticks_after" "$requests") $(cpu_per_request "$user_before" "$user_after" "$requests")"
    fi
    stop_server
}

# callgrind_case <app> <mode>: prints "requests instructions instructions_per_request".
callgrind_case() {
    local app=$1 mode=$2 out="$work/out" profile="$CG_DIR/$app-${mode/@/-}.callgrind"
    rm -f "$profile".*
    start_server "$app" "$mode" valgrind --tool=callgrind --dump-instr=no \
        --compress-strings=no --compress-pos=no --callgrind-out-file="$profile.%p"
    wrk -t1 -c4 -d"$CG_WARMUP" -H "$HEADER: $token" "http://127.0.0.1:$PORT/" >/dev/null
    callgrind_control -z "$server_pid" >/dev/null 2>&1
    wrk -t1 -c4 -d"$CG_DURATION" -H "$HEADER: $token" "http://127.0.0.1:$PORT/" >"$out"
    callgrind_control -d "$server_pid" >/dev/null 2>&1
    if grep -q 'Non-2xx' "$out"; then
        echo "error: $app/$mode: non-2xx responses under callgrind" >&2; exit 1
    fi
    local requests ir
    requests=$(awk '/requests in/ {print $1}' "$out")
    # The dump (part 1) holds exactly what ran between zeroing and dumping.
    ir=$(awk '/^summary:/ {print $2}' "$profile.$server_pid.1")
    mv "$profile.$server_pid.1" "$profile"
    stop_server
    rm -f "$profile".*[0-9]
    awk -v r="$requests" -v i="$ir" 'BEGIN { printf "%d %d %.0f\n", r, i, i / r }'
}

if [ "$CALLGRIND" = 1 ]; then
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v wrk >/dev/null || {
        echo "error: CALLGRIND=1 needs valgrind (callgrind_control) and wrk" >&2; exit 1; }
    CG_DIR=${CG_DIR:-$(mktemp -d)}
    mkdir -p "$CG_DIR"
    echo "callgrind: warm-up $CG_WARMUP, counted $CG_DURATION, wrk -t1 -c4; profiles in $CG_DIR" >&2
    printf '| app | mode | requests counted | instructions | instructions/request |\n'
    echo '|---|---|---:|---:|---:|'
    for app in $APPS; do
        for mode in $MODES; do
            if [ "$mode" = noop ] && [ "$app" != axum ]; then continue; fi
            read -r requests ir per <<<"$(callgrind_case "$app" "$mode")"
            printf '| %s | %s | %d | %d | %d |\n' "$app" "$mode" "$requests" "$ir" "$per"
        done
    done
    exit 0
fi

results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    for app in $APPS; do
        for mode in $MODES; do
            if [ "$mode" = noop ] && [ "$app" != axum ]; then continue; fi
            line=$(run_case "$app" "$mode")
            echo "round $round  $app/$mode: $line" >&2
            echo "$app $mode $line $round" >>"$results"
        done
    done
done

echo
printf '| app | mode | requests/s (mean of %s) | p50 ms | p99 ms | server CPU µs/request | of which user |\n' "$ROUNDS"
echo '|---|---|---:|---:|---:|---:|---:|'
awk '{ k = $1 " " $2; if (!(k in n)) order[++keys] = k; n[k]++; rps[k] += $3; p50[k] += $4; p99[k] += $5; cpu[k] += $6; usr[k] += $7
       r[k, $8] = $3; c[k, $8] = $6; if ($8 > rounds) rounds = $8 }
     END {
        label["bare"] = "bare"; label["guard"] = "with middleware"; label["noop"] = "pass-through layer"
        label["guard@base"] = "with middleware, baseline build"
        for (i = 1; i <= keys; i++) { k = order[i]; split(k, a, " ")
            printf "| %s | %s | %.0f | %.3f | %.3f | %.2f | %.2f |\n", a[1], label[a[2]], rps[k]/n[k], p50[k]/n[k], p99[k]/n[k], cpu[k]/n[k], usr[k]/n[k] }
        printf "\n"
        for (i = 1; i <= keys; i++) { k = order[i]; split(k, a, " "); app = a[1]; base = app " bare"
            if (a[2] == "bare" || !(base in n)) continue
            b = rps[base]/n[base]; g = rps[k]/n[k]; cb = cpu[base]/n[base]; cg = cpu[k]/n[k]
            # Paired by round (bare and this mode ran back to back): mean and
            # standard error of the per-round costs. With the server
            # CPU-bound, throughput goes as 1 / CPU per request, so the CPU
            # columns predict the cost too.
            m = 0; q = 0; mc = 0; qc = 0
            for (j = 1; j <= rounds; j++) {
                t = (1 - r[k, j] / r[base, j]) * 100; m += t; q += t * t
                t = (c[k, j] - c[base, j]) * 100 / c[k, j]; mc += t; qc += t * t }
            m /= rounds; mc /= rounds
            se = rounds > 1 ? sqrt((q - rounds * m * m) / (rounds - 1) / rounds) : 0
            sec = rounds > 1 ? sqrt((qc - rounds * mc * mc) / (rounds - 1) / rounds) : 0
            printf "%s/%s: costs %.1f %% of bare throughput (per round %.1f ± %.1f %%); +%.2f µs server CPU per request (CPU-predicted cost %.1f ± %.1f %%)\n", app, a[2], (b - g) * 100 / b, m, se, cg - cb, mc, sec }
     }' "$results"
