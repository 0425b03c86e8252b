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
# guarded alternate within a round so drift hits both alike).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18480}
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
echo "load tool: $tool; duration $DURATION, $CONNECTIONS connections, $THREADS tool thread(s), $WORKERS server worker(s), $ROUNDS rounds" >&2

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

# run_case <app> <mode>: prints "rps p50_ms p99_ms server_cpu_us_per_request".
run_case() {
    local app=$1 mode=$2 token_file="$work/token" out="$work/out"
    rm -f "$token_file"
    BENCH_WORKERS=$WORKERS "$bin/${app}_bench" "127.0.0.1:$PORT" "$mode" "$token_file" >/dev/null 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        if [ -s "$token_file" ] && curl -s -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; then break; fi
        sleep 0.1
    done
    local token
    token=$(cat "$token_file")
    # The guarded app must accept the token and refuse its absence, or
    # we would be measuring the rejection path.
    local with without
    with=$(curl -s -o /dev/null -w '%{http_code}' -H "$HEADER: $token" "http://127.0.0.1:$PORT/")
    without=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")
    if [ "$with" != 200 ] || { [ "$mode" = guard ] && [ "$without" != 401 ]; }; then
        echo "error: $app/$mode answered $with with the token and $without without" >&2
        exit 1
    fi
    local ticks_before ticks_after
    ticks_before=$(cpu_ticks "$server_pid")
    if [ "$tool" = wrk ]; then
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$HEADER: $token" "http://127.0.0.1:$PORT/" >"$out"
        if grep -q 'Non-2xx' "$out"; then
            echo "error: $app/$mode: non-2xx responses under load" >&2; cat "$out" >&2; exit 1
        fi
        local rps p50 p99
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        p50=$(awk '$1 == "50%" {print $2}' "$out")
        p99=$(awk '$1 == "99%" {print $2}' "$out")
        requests=$(awk '/requests in/ {print $1}' "$out")
        ticks_after=$(cpu_ticks "$server_pid")
        echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(cpu_per_request "$ticks_before" "$ticks_after" "$requests")"
    else
        oha --no-tui -j -z "$DURATION" -c "$CONNECTIONS" -H "$HEADER: $token" "http://127.0.0.1:$PORT/" >"$out"
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
        echo "$rps $p50 $p99 $(cpu_per_request "$ticks_before" "$ticks_after" "$requests")"
    fi
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
    for app in actix axum; do
        for mode in bare guard; do
            line=$(run_case "$app" "$mode")
            echo "round $round  $app/$mode: $line" >&2
            echo "$app $mode $line" >>"$results"
        done
    done
done

echo
printf '| app | mode | requests/s (mean of %s) | p50 ms | p99 ms | server CPU µs/request |\n' "$ROUNDS"
echo '|---|---|---:|---:|---:|---:|'
awk '{ k = $1 " " $2; n[k]++; rps[k] += $3; p50[k] += $4; p99[k] += $5; cpu[k] += $6 }
     END {
        split("actix bare,actix guard,axum bare,axum guard", order, ",")
        for (i = 1; i <= 4; i++) { k = order[i]; split(k, a, " ")
            printf "| %s | %s | %.0f | %.3f | %.3f | %.2f |\n", a[1], (a[2] == "guard" ? "with middleware" : "bare"), rps[k]/n[k], p50[k]/n[k], p99[k]/n[k], cpu[k]/n[k] }
        printf "\n"
        split("actix,axum", apps, ",")
        for (i = 1; i <= 2; i++) { b = rps[apps[i] " bare"]/n[apps[i] " bare"]; g = rps[apps[i] " guard"]/n[apps[i] " guard"]
            cb = cpu[apps[i] " bare"]/n[apps[i] " bare"]; cg = cpu[apps[i] " guard"]/n[apps[i] " guard"]
            printf "%s: middleware costs %.1f %% of bare throughput; +%.2f µs server CPU per request\n", apps[i], (b - g) * 100 / b, cg - cb }
     }' "$results"
