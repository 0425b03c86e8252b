#!/usr/bin/env bash
# Gateway load test (issue 5, Benchmark): one run on 127.0.0.1, one hello
# origin (the sidecar's bench fixture), the same load tool (wrk) and
# connection count for every row:
#   direct       the origin itself
#   sidecar      portcullis-sidecar in front of the origin, one repeated token
#   cookie       the gateway with a reused app cookie (CF_Authorization)
#   headers      the gateway with CF-Access-Client-Id/-Secret on every request
#                (no cookie sent back; the app token is reused from the cache)
#   cold         the gateway with a different service token on every request,
#                so every exchange signs a new app token (no reuse at all)
#
#   benches/load/gateway.sh                  # prints the markdown tables
#   DURATION=10s CONNS=64 ROUNDS=3 COLD_TOKENS=24000 benches/load/gateway.sh
#
# Every case but `cold` runs ROUNDS times, in a different order each round,
# so drift on a shared machine spreads over all cases; the table shows the
# median and each round's requests/s and the load average when each round
# started. "CPU us/req" is the proxy's own CPU time (user+system, from /proc)
# per request. `cold` runs once per round for COLD_DURATION with
# COLD_TOKENS tokens; its rate is the gateway's tokens-signed counter delta
# over the wrk run, and the run is rejected when the tokens ran out (a
# reused token would be a cache hit, not a cold exchange).
#
# Needs: wrk, curl, python3. Ports from BASE_PORT (default 18100) up.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-10s}
COLD_DURATION=${COLD_DURATION:-1s}
COLD_TOKENS=${COLD_TOKENS:-24000}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18100}
GW_PORT=$((BASE_PORT + 1))
GW_ADMIN_PORT=$((BASE_PORT + 2))
SIDECAR_PORT=$((BASE_PORT + 3))
SIDECAR_ADMIN_PORT=$((BASE_PORT + 4))
ADMIN_TOKEN=bench-admin-token-$RANDOM$RANDOM$RANDOM

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

cd "$ROOT"
if [ -z "${SKIP_BUILD:-}" ]; then  # SKIP_BUILD=1: use the release binaries already built
  cargo build --release -q -p portcullis-gateway --bin portcullis-gateway
  cargo build --release -q -p portcullis-sidecar --bin portcullis-sidecar --example sidecar_bench_fixture
fi
GW_BIN="$ROOT/target/release/portcullis-gateway"
SIDECAR_BIN="$ROOT/target/release/portcullis-sidecar"
FIXTURE_BIN="$ROOT/target/release/examples/sidecar_bench_fixture"

WORK=$(mktemp -d /tmp/portcullis-gateway-load.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
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

# The origin (and, for the sidecar, certs and a token of its own issuer).
"$FIXTURE_BIN" "$WORK/fixture" 1 >/dev/null 2>&1 & PIDS+=($!)
wait_for "$WORK/fixture/ready"
# shellcheck disable=SC1091
source "$WORK/fixture/env"
SIDECAR_TOKEN=$(cat "$WORK/fixture/token")

# The sidecar in front of it, as benches/load/run.sh runs it.
RUST_LOG=warn "$SIDECAR_BIN" --listen "127.0.0.1:$SIDECAR_PORT" --admin-listen "127.0.0.1:$SIDECAR_ADMIN_PORT" \
  --team-domain "$TEAM_DOMAIN" --audience "$AUD" --upstream "$UPSTREAM" >>"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!; PIDS+=("$SIDECAR_PID")
wait_for "$SIDECAR_PORT"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$SIDECAR_ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# The gateway in front of the same origin: SQLite, audit on (as deployed),
# logs at warn (no row pays for access logging).
HOST="hello.bench.test:$GW_PORT"
mkdir -p "$WORK/gw"
cat >"$WORK/gw/gateway.toml" <<CONF
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$GW_ADMIN_PORT"
team_domain = "http://auth.bench.test:$GW_PORT"
log_format = "text"

[storage]
data_dir = "data"

[service_tokens]
max_failures_per_address = 100000

[[apps]]
name = "hello"
domain = "$HOST"
origin = "$UPSTREAM"

[[apps.policies]]
name = "bots"
decision = "service_auth"
include = [{ any_valid_service_token = true }]
CONF
export PORTCULLIS_ADMIN_TOKEN=$ADMIN_TOKEN
"$GW_BIN" check --config "$WORK/gw/gateway.toml" >/dev/null
"$GW_BIN" service-token create --config "$WORK/gw/gateway.toml" --name bench-bot --json >"$WORK/bot.json"
CLIENT_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client_id"])' "$WORK/bot.json")
CLIENT_SECRET=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client_secret"])' "$WORK/bot.json")
RUST_LOG=warn "$GW_BIN" serve --config "$WORK/gw/gateway.toml" >>"$WORK/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
wait_for "$GW_PORT"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$GW_ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Tokens for the cold case, created through the admin API (one connection).
echo "creating $COLD_TOKENS service tokens for the cold case..." >&2
python3 - "$GW_ADMIN_PORT" "$ADMIN_TOKEN" "$COLD_TOKENS" "$WORK/cold-tokens" <<'PY'
import http.client, json, sys
port, token, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port)
with open(out, "w") as f:
    for i in range(n):
        conn.request("POST", "/admin/v1/service-tokens", json.dumps({"name": f"cold-{i}"}),
                     {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse(); body = json.loads(r.read())
        assert r.status in (200, 201), r.status
        f.write(f"{body['client_id']} {body['client_secret']}\n")
PY
cat >"$WORK/cold.lua" <<'LUA'
-- Each wrk thread walks its own slice of the token list; every request
-- carries a token not used before (until the slice runs out).
local tokens, counter = {}, 0
function setup(thread)
  counter = counter + 1
  thread:set("slot", counter)
end
function init(args)
  local all = {}
  for line in io.lines(args[1]) do all[#all + 1] = line end
  local n, per = tonumber(args[2]), math.floor(#all / tonumber(args[3]))
  local first = (slot - 1) * per
  for i = 1, per do tokens[i] = all[first + i] end
  wrk.headers["Host"] = args[4]
  i = 0
end
function request()
  i = i + 1
  if i > #tokens then i = 1 end
  local id, secret = tokens[i]:match("(%S+) (%S+)")
  wrk.headers["CF-Access-Client-Id"] = id
  wrk.headers["CF-Access-Client-Secret"] = secret
  return wrk.format(nil, "/")
end
LUA

# Sanity: each path answers 200 and the gateway's cookie admits on its own.
curl -fs "$UPSTREAM/" >/dev/null
curl -fs -H "Cf-Access-Jwt-Assertion: $SIDECAR_TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null
COOKIE=$(curl -fs -o /dev/null -D - -H "Host: $HOST" -H "CF-Access-Client-Id: $CLIENT_ID" \
  -H "CF-Access-Client-Secret: $CLIENT_SECRET" "http://127.0.0.1:$GW_PORT/" |
  awk -F'[ ;]' 'tolower($1) == "set-cookie:" && $2 ~ /^CF_Authorization=/ { print $2 }')
[ -n "$COOKIE" ] || { echo "the gateway set no app cookie" >&2; exit 1; }
curl -fs -H "Host: $HOST" -H "Cookie: $COOKIE" "http://127.0.0.1:$GW_PORT/" >/dev/null
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$GW_PORT/")" = 401 ]

cpu_ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
CLK_TCK=$(getconf CLK_TCK)
signed() { curl -fs "http://127.0.0.1:$GW_ADMIN_PORT/metrics" | awk '$1 == "portcullis_gateway_tokens_signed_total" { print $2 }'; }

# wrk ... -> "rps p50ms p99ms cpu_us_per_req requests"
measure() {
  local out pids=$1 t0 t1
  shift
  t0=$(cpu_ticks $pids)
  out=$(wrk -t"$THREADS" -c"$CONNS" --latency "$@")
  t1=$(cpu_ticks $pids)
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers during: $*" >&2; grep "Non-2xx" <<<"$out" >&2; exit 1
  fi
  awk -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" -v haspid="$pids" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /requests in/ { n=$1 }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    END { cpu = (haspid != "" && n > 0) ? sprintf("%.1f", ticks * 1e6 / hz / n) : "-";
          printf "%.0f %.3f %.3f %s %d\n", rps, p50, p99, cpu, n }' <<<"$out"
}

echo "warming up..." >&2
wrk -t"$THREADS" -c"$CONNS" -d2s "$UPSTREAM/" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d2s -H "Cf-Access-Jwt-Assertion: $SIDECAR_TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d2s -H "Host: $HOST" -H "Cookie: $COOKIE" "http://127.0.0.1:$GW_PORT/" >/dev/null

CASES=(direct sidecar cookie headers)
run_case() {
  case $1 in
    direct)  measure "" -d"$DURATION" "$UPSTREAM/" ;;
    sidecar) measure "$SIDECAR_PID" -d"$DURATION" -H "Cf-Access-Jwt-Assertion: $SIDECAR_TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" ;;
    cookie)  measure "$GW_PID" -d"$DURATION" -H "Host: $HOST" -H "Cookie: $COOKIE" "http://127.0.0.1:$GW_PORT/" ;;
    headers) measure "$GW_PID" -d"$DURATION" -H "Host: $HOST" -H "CF-Access-Client-Id: $CLIENT_ID" \
               -H "CF-Access-Client-Secret: $CLIENT_SECRET" "http://127.0.0.1:$GW_PORT/" ;;
  esac
}

# Cold: a slice of unused tokens per round; -> "exchanges/s p50 p99 cpu requests signed"
COLD_PER_ROUND=$((COLD_TOKENS / ROUNDS))
cold_round() { # round
  local from=$((($1 - 1) * COLD_PER_ROUND + 1)) s0 s1 r t0 t1 secs
  sed -n "${from},$((from + COLD_PER_ROUND - 1))p" "$WORK/cold-tokens" >"$WORK/cold-round"
  s0=$(signed); t0=$(date +%s.%N)
  r=$(measure "$GW_PID" -d"$COLD_DURATION" -s "$WORK/cold.lua" "http://127.0.0.1:$GW_PORT/" -- \
        "$WORK/cold-round" "$COLD_PER_ROUND" "$THREADS" "$HOST")
  t1=$(date +%s.%N); s1=$(signed)
  local n; n=$(cut -d' ' -f5 <<<"$r")
  if [ "$n" -gt "$COLD_PER_ROUND" ]; then
    echo "cold round $1: $n requests for $COLD_PER_ROUND tokens; raise COLD_TOKENS" >&2; exit 1
  fi
  secs=${COLD_DURATION%s}
  echo "$(awk -v d=$((s1 - s0)) -v s="$secs" 'BEGIN { printf "%.0f", d / s }') $(cut -d' ' -f2-5 <<<"$r") $((s1 - s0))"
}

declare -A R
LOADS=()
for round in $(seq 1 "$ROUNDS"); do
  LOADS+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  n=${#CASES[@]}
  for i in $(seq 0 $((n - 1))); do
    c=${CASES[$(((i + round - 1) % n))]}
    echo "round $round: $c..." >&2
    R[$c,$round]=$(run_case "$c")
  done
  echo "round $round: cold..." >&2
  R[cold,$round]=$(cold_round "$round")
done

median() { # case column
  local r vals=()
  for r in $(seq 1 "$ROUNDS"); do vals+=("$(cut -d' ' -f"$2" <<<"${R[$1,$r]}")"); done
  printf '%s\n' "${vals[@]}" | sort -g | awk '{ v[NR]=$1 } END { if (v[1] == "-") print "-"; else if (NR % 2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2 }'
}
rounds_rps() { local r out=""; for r in $(seq 1 "$ROUNDS"); do out+="${out:+ / }$(cut -d' ' -f1 <<<"${R[$1,$r]}")"; done; echo "$out"; }
row() { # name case
  printf "| %s | %.0f | %s | %s | %s | %s |\n" "$1" "$(median "$2" 1)" "$(median "$2" 2)" "$(median "$2" 3)" "$(median "$2" 4)" "$(rounds_rps "$2")"
}

SIDECAR_RPS=$(median sidecar 1)
COOKIE_RPS=$(median cookie 1)
echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds (median; each round's requests/s), $(nproc) CPUs,"
echo "load average (1/5/15 min) at each round's start: $(printf '%s; ' "${LOADS[@]}")"
echo
echo "| path | requests/s | p50 ms | p99 ms | proxy CPU us/req | rounds (requests/s) |"
echo "|---|---|---|---|---|---|"
row "origin, direct" direct
row "sidecar, repeated token" sidecar
row "gateway, reused app cookie" cookie
row "gateway, service-token headers" headers
echo
awk -v c="$COOKIE_RPS" -v s="$SIDECAR_RPS" 'BEGIN { printf "cookie path / sidecar = %.2f (target >= 0.70)\n", c / s }'
echo
echo "Cold service-token exchanges (a token never used before on every request, so every exchange signs):"
echo
echo "| cold exchanges/s (tokens signed / s) | p50 ms | p99 ms | gateway CPU us/exchange | rounds (exchanges/s) |"
echo "|---|---|---|---|---|"
printf "| %.0f | %s | %s | %s | %s |\n" "$(median cold 1)" "$(median cold 2)" "$(median cold 3)" "$(median cold 4)" "$(rounds_rps cold)"
