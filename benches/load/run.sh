#!/usr/bin/env bash
# Sidecar load test (issue 4): one run on 127.0.0.1, same hello upstream,
# same load tool (wrk) and connection count for every row:
#   direct, nginx proxy_pass, sidecar with a repeated token, sidecar with
#   distinct tokens, Apache + libapache2-mod-oauth2 (when installed), and the
#   sidecar's RSS with 1,000 open keep-alive connections.
#
#   benches/load/run.sh                 # prints the markdown table
#   DURATION=30s CONNS=64 ROUNDS=5 benches/load/run.sh
#   BEFORE_BIN=/tmp/sidecar-old benches/load/run.sh   # before/after rows in one run
#   CASES="nginx repeat" RSS=no benches/load/run.sh    # only some rows (quick checks)
#   PACED="12 6" benches/load/run.sh     # fixed-load latency rows (see below)
#   PIN=0:1 WORKERS=1 benches/load/run.sh # wrk and upstream on CPU 0, proxies on CPU 1
#
# Every case runs ROUNDS times (default 3), in a different order each round
# so that drift on a shared machine spreads over all cases; the table shows
# the median of the rounds and each round's requests/s, plus the load
# average when the round started. "CPU us/req" is the proxy's own CPU time
# (user+system, from /proc) per request: less sensitive to neighbours than
# requests/s.
#
# The first table drives every setup as hard as it goes: with 64 busy
# connections a request's latency is mostly its wait behind the other 63
# (Little's law: mean latency = connections / requests per second), so it
# measures throughput twice. The second table measures what a proxy adds
# to a request's latency: the same 64 connections, each pausing PACED
# milliseconds on average (default 12, i.e. about 5,000 requests/s
# offered; a list gives one set of rows per pause) between a response and
# its next request (benches/load/paced.lua), so no setup is saturated.
#
# Needs: wrk, nginx (apt-get install wrk nginx); optional: apache2
# libapache2-mod-oauth2. Ports are taken from BASE_PORT (default 18000) up.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$THREADS}
PIN=${PIN:-}
TOKENS=${TOKENS:-20000}
MANY_CONNS=${MANY_CONNS:-1000}
ROUNDS=${ROUNDS:-3}
BEFORE_BIN=${BEFORE_BIN:-}
BASE_PORT=${BASE_PORT:-18000}
PACED=${PACED-12}
QUIET_STEAL=${QUIET_STEAL:-2}
NGINX_PORT=$((BASE_PORT + 1))
APACHE_PORT=$((BASE_PORT + 2))
SIDECAR_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))
BEFORE_PORT=$((BASE_PORT + 5))
BEFORE_ADMIN_PORT=$((BASE_PORT + 6))

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx" >&2; exit 1; }
done

# PIN=LOAD:PROXY (CPU lists for taskset) keeps the load tool and the
# upstream off the proxies' CPUs, as when they are other machines; the
# proxies then usually run WORKERS=1 (nginx worker_processes, sidecar
# --workers).
LOAD=(); PROXY=()
if [ -n "$PIN" ]; then
  command -v taskset >/dev/null || { echo "PIN needs taskset (util-linux)" >&2; exit 1; }
  LOAD=(taskset -c "${PIN%%:*}"); PROXY=(taskset -c "${PIN#*:}")
fi

cd "$ROOT"
cargo build --release -q -p portcullis-sidecar --bin portcullis-sidecar --example sidecar_bench_fixture
SIDECAR_BIN="$ROOT/target/release/portcullis-sidecar"
FIXTURE_BIN="$ROOT/target/release/examples/sidecar_bench_fixture"

WORK=$(mktemp -d /tmp/portcullis-sidecar-load.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [ -f "$WORK/apache.pid" ] && kill "$(cat "$WORK/apache.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # file-or-port
  for _ in $(seq 1 600); do
    if [[ "$1" == /* ]]; then [ -e "$1" ] && return 0
    else (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; exit 1
}

echo "signing $TOKENS tokens..." >&2
"${LOAD[@]}" "$FIXTURE_BIN" "$WORK" "$TOKENS" & PIDS+=($!)
wait_for "$WORK/ready"
# shellcheck disable=SC1091
source "$WORK/env"
TOKEN=$(cat "$WORK/token")

# nginx: plain proxy_pass with keep-alive to the upstream.
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
error_log $WORK/nginx/error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  upstream hello { server $UPSTREAM_ADDR; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://hello;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
"${PROXY[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
wait_for "$NGINX_PORT"

# The sidecar; access logs at warn so no row pays for logging (nginx and
# Apache run without access logs too). --workers $WORKERS serving threads
# (its default is one per core), like nginx's worker_processes $WORKERS.
start_sidecar() { # bin port admin-port -> pid in STARTED_PID
  local workers=() help
  # Binaries from before --workers existed ran one tokio worker per core.
  help=$("$1" --help)
  [[ $help == *--workers* ]] && workers=(--workers "$WORKERS")
  RUST_LOG=warn "${PROXY[@]}" "$1" --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" "${workers[@]}" \
    --team-domain "$TEAM_DOMAIN" --audience "$AUD" --upstream "$UPSTREAM" >>"$WORK/sidecar.log" 2>&1 &
  STARTED_PID=$!; PIDS+=("$STARTED_PID")
  wait_for "$2"
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$3/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}
start_sidecar "$SIDECAR_BIN" "$SIDECAR_PORT" "$ADMIN_PORT"; SIDECAR_PID=$STARTED_PID
if [ -n "$BEFORE_BIN" ]; then
  start_sidecar "$BEFORE_BIN" "$BEFORE_PORT" "$BEFORE_ADMIN_PORT"; BEFORE_PID=$STARTED_PID
fi

# Apache with mod_oauth2 validating the same token against the same certs.
APACHE=no
if [ -f /usr/lib/apache2/modules/mod_oauth2.so ] && command -v apache2 >/dev/null; then
  M=/usr/lib/apache2/modules
  cat > "$WORK/apache.conf" <<CONF
ServerRoot /etc/apache2
ServerName localhost
Listen 127.0.0.1:$APACHE_PORT
PidFile $WORK/apache.pid
ErrorLog $WORK/apache-error.log
LogLevel warn
User www-data
Group www-data
Mutex file:$WORK
DefaultRuntimeDir $WORK
LoadModule mpm_event_module $M/mod_mpm_event.so
LoadModule authz_core_module $M/mod_authz_core.so
LoadModule authz_user_module $M/mod_authz_user.so
LoadModule authn_core_module $M/mod_authn_core.so
LoadModule proxy_module $M/mod_proxy.so
LoadModule proxy_http_module $M/mod_proxy_http.so
LoadModule oauth2_module $M/mod_oauth2.so
KeepAlive On
MaxKeepAliveRequests 0
<IfModule mpm_event_module>
  ThreadsPerChild 64
  MaxRequestWorkers 1024
  ServerLimit 16
</IfModule>
<Location />
  AuthType oauth2
  OAuth2TokenVerify jwks_uri $CERTS_URL
  Require valid-user
</Location>
ProxyPass / $UPSTREAM/
CONF
  chmod 755 "$WORK"
  if "${PROXY[@]}" apache2 -f "$WORK/apache.conf" -k start 2>"$WORK/apache-start.log"; then
    wait_for "$APACHE_PORT"
    if curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$APACHE_PORT/" >/dev/null; then
      APACHE=yes
    else
      echo "Apache mod_oauth2 did not accept the token; skipping its row" >&2
      tail -5 "$WORK/apache-error.log" >&2 || true
    fi
  else
    echo "Apache did not start; skipping its row" >&2; cat "$WORK/apache-start.log" >&2
  fi
fi

# Sanity: each target answers 200, and the sidecar refuses a missing token.
curl -fs "$UPSTREAM/" >/dev/null
curl -fs "http://127.0.0.1:$NGINX_PORT/" >/dev/null
curl -fs -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SIDECAR_PORT/")" = 401 ]

# Sums over the given pids: user and system CPU ticks, and involuntary
# context switches of all their threads (preemptions).
cpu_ticks() { local u=0 s=0 pid; for pid in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$pid/stat"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }
preempted() { local n=0 pid; for pid in "$@"; do n=$((n + $(cat /proc/"$pid"/task/*/status | awk '/^nonvoluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'))); done; echo "$n"; }
# The machine's steal and total CPU ticks (all CPUs, from /proc/stat): the
# time a virtual machine's host gave its CPUs to someone else. Latency
# tails follow it closely on a shared host, so every case records it.
host_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat; }
NGINX_PIDS=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
CLK_TCK=$(getconf CLK_TCK)

# measure "pids" conns wrk-args... -> "rps p50 p99 cpu_us user_us sys_us preempted"
# per request (latencies in ms; "-" without pids).
measure() {
  local out pids=$1 u0 s0 u1 s1 n0 n1 h0 h1
  shift
  # shellcheck disable=SC2086
  read -r u0 s0 <<<"$(cpu_ticks $pids)"; n0=$(preempted $pids); h0=$(host_ticks)
  out=$("${LOAD[@]}" wrk -t"$THREADS" -c"$1" -d"$DURATION" --latency "${@:2}")
  # shellcheck disable=SC2086
  read -r u1 s1 <<<"$(cpu_ticks $pids)"; n1=$(preempted $pids); h1=$(host_ticks)
  echo "$out" >"$WORK/last-wrk.txt"
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers during: ${*:2}" >&2; grep "Non-2xx" <<<"$out" >&2
  fi
  awk -v ut=$((u1 - u0)) -v st=$((s1 - s0)) -v pre=$((n1 - n0)) -v hz="$CLK_TCK" -v haspid="$pids" \
      -v steal=$(( ${h1% *} - ${h0% *} )) -v all=$(( ${h1#* } - ${h0#* } )) '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    function per(x, scale) { return (haspid != "" && n > 0) ? sprintf("%.1f", x * scale / n) : "-" }
    /requests in/ { n=$1 }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    END { printf "%.0f %.3f %.3f %s %s %s %s %.1f\n", rps, p50, p99, per(ut + st, 1e6 / hz), per(ut, 1e6 / hz), per(st, 1e6 / hz),
          (haspid != "" && n > 0) ? sprintf("%.2f", pre / n) : "-", (all > 0) ? 100 * steal / all : 0 }' <<<"$out"
}

echo "warming up..." >&2
"${LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s "$UPSTREAM/" >/dev/null
"${LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null
"${LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null
[ -n "$BEFORE_BIN" ] && "${LOAD[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$BEFORE_PORT/" >/dev/null

if [ -n "${CASES:-}" ]; then
  CASES_SET=yes
  read -ra CASES <<<"$CASES"
else
  CASES=(direct nginx repeat distinct)
  [ -n "$BEFORE_BIN" ] && CASES+=(before_repeat before_distinct)
  [ "$APACHE" = yes ] && CASES+=(apache)
  for p in $PACED; do CASES+=("paced_direct@$p" "paced_nginx@$p" "paced_repeat@$p" "paced_distinct@$p"); done
fi
PACED_LUA="$ROOT/benches/load/paced.lua"
run_case() {
  local pause=${1#*@}
  case $1 in
    paced_direct@*)   measure "" "$CONNS" -s "$PACED_LUA" "$UPSTREAM/" -- "$pause" ;;
    paced_nginx@*)    measure "$NGINX_PIDS" "$CONNS" -s "$PACED_LUA" "http://127.0.0.1:$NGINX_PORT/" -- "$pause" ;;
    paced_repeat@*)   measure "$SIDECAR_PID" "$CONNS" -s "$PACED_LUA" -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" -- "$pause" ;;
    paced_distinct@*) measure "$SIDECAR_PID" "$CONNS" -s "$PACED_LUA" "http://127.0.0.1:$SIDECAR_PORT/" -- "$pause" "$WORK/tokens" ;;
    direct)          measure "" "$CONNS" "$UPSTREAM/" ;;
    nginx)           measure "$NGINX_PIDS" "$CONNS" "http://127.0.0.1:$NGINX_PORT/" ;;
    repeat)          measure "$SIDECAR_PID" "$CONNS" -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" ;;
    distinct)        measure "$SIDECAR_PID" "$CONNS" -s "$ROOT/benches/load/sidecar_tokens.lua" "http://127.0.0.1:$SIDECAR_PORT/" -- "$WORK/tokens" ;;
    before_repeat)   measure "$BEFORE_PID" "$CONNS" -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$BEFORE_PORT/" ;;
    before_distinct) measure "$BEFORE_PID" "$CONNS" -s "$ROOT/benches/load/sidecar_tokens.lua" "http://127.0.0.1:$BEFORE_PORT/" -- "$WORK/tokens" ;;
    apache)          measure "" "$CONNS" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$APACHE_PORT/" ;;
  esac
}

declare -A R
LOADS=()
for round in $(seq 1 "$ROUNDS"); do
  LOADS+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  # Rotate the order each round.
  n=${#CASES[@]}
  for i in $(seq 0 $((n - 1))); do
    c=${CASES[$(((i + round - 1) % n))]}
    echo "round $round: $c..." >&2
    R[$c,$round]=$(run_case "$c")
  done
done

# Median of the rounds, per column (1 rps, 2 p50, 3 p99, 4 cpu, 5 user,
# 6 system, 7 preemptions).
median_of() { # numbers on stdin, one per line ("-" when there are none)
  sort -g | awk '{ v[NR]=$1 } END { if (NR == 0 || v[1] == "-") print "-"; else if (NR % 2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2 }'
}
median() { # case column
  local r
  for r in $(seq 1 "$ROUNDS"); do cut -d' ' -f"$2" <<<"${R[$1,$r]}"; done | median_of
}
rounds_col() { # case column [second column, shown as " (x %)"] -> "a / b / ..." over the rounds
  local r v out=""
  for r in $(seq 1 "$ROUNDS"); do
    v=$(cut -d' ' -f"$2" <<<"${R[$1,$r]}")
    [ -n "${3:-}" ] && v+=" ($(cut -d' ' -f"$3" <<<"${R[$1,$r]}") %)"
    out+="${out:+ / }$v"
  done
  echo "$out"
}
ran() { [[ " ${CASES[*]} " == *" $1 "* ]]; }
row() { # name case
  ran "$2" || return 0
  local cpu
  cpu=$(median "$2" 4)
  [ "$cpu" != - ] && cpu=$(printf "%.1f (%.1f + %.1f)" "$cpu" "$(median "$2" 5)" "$(median "$2" 6)")
  printf "| %s | %.0f | %s | %s | %s | %s | %s |\n" "$1" "$(median "$2" 1)" "$(median "$2" 2)" "$(median "$2" 3)" \
    "$cpu" "$(median "$2" 7)" "$(rounds_col "$2" 1)"
}

# RSS on a fresh sidecar, so the distinct-token runs' verified-token cache
# (10,000 entries) does not count against the connections: first with
# MANY_CONNS connections open and idle after one request each (needs
# python3), then with MANY_CONNS connections kept busy by wrk.
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
hold_idle() { # port
  python3 - "$1" "$MANY_CONNS" "$TOKEN" <<'PY'
import asyncio, sys
port, n, tok = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCf-Access-Jwt-Assertion: {tok}\r\n\r\n".encode()
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(req); await w.drain(); await r.readuntil(b"hello")
    return r, w
async def main():
    conns = []
    for i in range(0, n, 100):
        conns += await asyncio.gather(*[one() for _ in range(min(100, n - i))])
    print("open", flush=True)
    await asyncio.sleep(3)
asyncio.run(main())
PY
}
rss_case() { # bin port admin-port -> "fresh idle busy rps" (KiB)
  local pid fresh idle=- busy wrk_pid r
  start_sidecar "$1" "$2" "$3"; pid=$STARTED_PID
  curl -fs -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$2/" >/dev/null
  fresh=$(rss_kib "$pid")
  if command -v python3 >/dev/null; then
    hold_idle "$2" >"$WORK/hold.txt" & local hold_pid=$!
    for _ in $(seq 1 100); do grep -q open "$WORK/hold.txt" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5; idle=$(rss_kib "$pid"); wait "$hold_pid" || true
  fi
  "${LOAD[@]}" wrk -t"$THREADS" -c"$MANY_CONNS" -d"$DURATION" -H "Cf-Access-Jwt-Assertion: $TOKEN" \
    "http://127.0.0.1:$2/" >"$WORK/many.txt" &
  wrk_pid=$!
  busy=$fresh
  while kill -0 "$wrk_pid" 2>/dev/null; do
    r=$(rss_kib "$pid"); [ "$r" -gt "$busy" ] && busy=$r
    sleep 0.2
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$fresh $idle $busy $(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$WORK/many.txt")"
}
kill "$SIDECAR_PID"; wait "$SIDECAR_PID" 2>/dev/null || true
[ -n "$BEFORE_BIN" ] && { kill "$BEFORE_PID"; wait "$BEFORE_PID" 2>/dev/null || true; }
if [ "${RSS:-yes}" != no ]; then
  echo "sidecar RSS with $MANY_CONNS connections..." >&2
  RSS_AFTER=$(rss_case "$SIDECAR_BIN" "$SIDECAR_PORT" "$ADMIN_PORT")
  [ -n "$BEFORE_BIN" ] && RSS_BEFORE=$(rss_case "$BEFORE_BIN" "$BEFORE_PORT" "$BEFORE_ADMIN_PORT")
fi

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, $(nproc) cores, $(uname -r); upstream: hyper hello; $TOKENS distinct tokens; proxy workers: $WORKERS${PIN:+; CPUs: load and upstream ${PIN%%:*}, proxies ${PIN#*:}}"
echo "load average (1/5/15 min) at the start of each round: $(IFS=';'; echo "${LOADS[*]}" | sed 's/;/; /g')"
echo
echo "| setup | requests/s | p50 ms | p99 ms | proxy CPU us/req (user + system) | preempted/req | requests/s per round |"
echo "|---|---:|---:|---:|---:|---:|---|"
row "direct (hyper hello)" direct
row "nginx proxy_pass" nginx
row "sidecar before, repeated token" before_repeat
row "sidecar, repeated token" repeat
row "sidecar before, distinct tokens" before_distinct
row "sidecar, distinct tokens" distinct
if [ "$APACHE" = yes ]; then
  row "Apache mod_oauth2" apache
elif [ -z "${CASES_SET:-}" ]; then
  echo "| Apache mod_oauth2 | not installed | | | | | |"
fi
paced_row() { # name case
  ran "$2" || return 0
  local base=paced_direct@${2#*@}
  printf "| %s | %s | %.0f | %s | %s | %s | %s |\n" "$1" "${2#*@}" "$(median "$2" 1)" "$(median "$2" 2)" "$(median "$2" 3)" \
    "$(awk -v p="$(median "$2" 3)" -v d="$(median "$base" 3)" 'BEGIN { printf "%+.3f", p - d }')" "$(rounds_col "$2" 3 8)"
}
if [ -n "$PACED" ] && ran "paced_direct@${PACED%% *}"; then
  echo
  echo "Latency at a fixed offered load: the same $CONNS connections, each pausing a random time (exponential, the given mean) between a response and its next request"
  echo
  echo "| setup | mean pause ms | requests/s | p50 ms | p99 ms | p99 added over direct, ms | p99 ms per round (host steal) |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  for p in $PACED; do
    paced_row "direct (hyper hello)" "paced_direct@$p"
    paced_row "nginx proxy_pass" "paced_nginx@$p"
    paced_row "sidecar, repeated token" "paced_repeat@$p"
    paced_row "sidecar, distinct tokens" "paced_distinct@$p"
  done
fi
echo
rss_line() { # name "fresh idle busy rps"
  local fresh idle busy rps
  read -r fresh idle busy rps <<<"$2"
  mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB (%.1f MB)", k / 1024, k * 1024 / 1e6 }'; }
  [ "$idle" != - ] && idle=$(mib "$idle") || idle="(no python3)"
  echo "$1 RSS: fresh $(mib "$fresh"); $MANY_CONNS open idle keep-alive connections $idle; peak with $MANY_CONNS busy keep-alive connections $(mib "$busy") ($rps requests/s)"
}
if [ "${RSS:-yes}" != no ]; then
  [ -n "$BEFORE_BIN" ] && rss_line "sidecar before" "$RSS_BEFORE"
  rss_line "sidecar" "$RSS_AFTER"
fi
if ran repeat && ran nginx; then
  awk -v s="$(median repeat 1)" -v n="$(median nginx 1)" 'BEGIN { printf "sidecar/nginx requests/s: %.2f (target >= 0.8)\n", s/n }'
fi
if ran repeat && ran direct; then
  awk -v dp="$(median direct 3)" -v sp="$(median repeat 3)" 'BEGIN { printf "sidecar p99 added over direct, saturated: %.3f ms\n", sp-dp }'
fi
for p in $PACED; do
  for c in repeat distinct; do
    ran "paced_$c@$p" && ran "paced_direct@$p" || continue
    awk -v dp="$(median "paced_direct@$p" 3)" -v sp="$(median "paced_$c@$p" 3)" -v c="$c" -v p="$p" \
      'BEGIN { printf "sidecar (%s token%s) p99 added over direct at %s ms pauses: %.3f ms (target <= 1)\n", c, c == "repeat" ? "" : "s", p, sp-dp }'
    # The same from the rounds in which the host stole less than QUIET_STEAL
    # percent of the CPUs during both cases: tails measured without a
    # neighbour's bursts, which no setup controls.
    quiet=()
    for r in $(seq 1 "$ROUNDS"); do
      read -r _ _ dp _ _ _ _ ds <<<"${R[paced_direct@$p,$r]}"
      read -r _ _ sp _ _ _ _ ss <<<"${R[paced_$c@$p,$r]}"
      awk -v a="$ds" -v b="$ss" -v q="$QUIET_STEAL" 'BEGIN { exit !(a < q && b < q) }' && quiet+=("$(awk -v a="$sp" -v b="$dp" 'BEGIN { print a - b }')")
    done
    if [ ${#quiet[@]} -gt 0 ]; then
      printf "  ... in the %d of %d rounds with host steal below %s %% in both cases: median %.3f ms, per round%s\n" \
        "${#quiet[@]}" "$ROUNDS" "$QUIET_STEAL" "$(printf '%s\n' "${quiet[@]}" | median_of)" \
        "$(printf '%s\n' "${quiet[@]}" | sort -g | xargs printf ' %.3f')"
    else
      echo "  ... no round had host steal below $QUIET_STEAL % in both cases"
    fi
  done
done
if ran before_repeat && ran nginx; then
  awk -v s="$(median before_repeat 1)" -v n="$(median nginx 1)" 'BEGIN { printf "sidecar before/nginx requests/s: %.2f\n", s/n }'
fi
if ran repeat && ran apache; then
  awk -v s="$(median repeat 1)" -v a="$(median apache 1)" 'BEGIN { printf "sidecar/Apache requests/s: %.2f (target >= 2)\n", s/a }'
fi
