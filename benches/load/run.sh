#!/usr/bin/env bash
# Sidecar load test (issue 4): one run on 127.0.0.1, same hello upstream,
# same load tool (wrk) and connection count for every row:
#   direct, nginx proxy_pass, sidecar with a repeated token, sidecar with
#   distinct tokens, Apache + libapache2-mod-oauth2 (when installed), and the
#   sidecar's RSS with 1,000 open keep-alive connections.
#
#   benches/load/run.sh                 # prints the markdown table
#   DURATION=30s CONNS=64 benches/load/run.sh
#
# Needs: wrk, nginx (apt-get install wrk nginx); optional: apache2
# libapache2-mod-oauth2. Ports are taken from BASE_PORT (default 18000) up.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-20000}
MANY_CONNS=${MANY_CONNS:-1000}
BASE_PORT=${BASE_PORT:-18000}
NGINX_PORT=$((BASE_PORT + 1))
APACHE_PORT=$((BASE_PORT + 2))
SIDECAR_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx" >&2; exit 1; }
done

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
"$FIXTURE_BIN" "$WORK" "$TOKENS" & PIDS+=($!)
wait_for "$WORK/ready"
# shellcheck disable=SC1091
source "$WORK/env"
TOKEN=$(cat "$WORK/token")

# nginx: plain proxy_pass with keep-alive to the upstream.
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes $THREADS;
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
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
wait_for "$NGINX_PORT"

# The sidecar; access logs at warn so no row pays for logging (nginx and
# Apache run without access logs too).
RUST_LOG=warn "$SIDECAR_BIN" --listen "127.0.0.1:$SIDECAR_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --team-domain "$TEAM_DOMAIN" --audience "$AUD" --upstream "$UPSTREAM" >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!; PIDS+=("$SIDECAR_PID")
wait_for "$SIDECAR_PORT"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

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
  if apache2 -f "$WORK/apache.conf" -k start 2>"$WORK/apache-start.log"; then
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

# wrk --latency output -> "rps p50 p99" (latencies in ms).
measure() {
  local out
  out=$(wrk -t"$THREADS" -c"$1" -d"$DURATION" --latency "${@:2}")
  echo "$out" >"$WORK/last-wrk.txt"
  if grep -q "Non-2xx" <<<"$out"; then
    echo "non-2xx answers during: ${*:2}" >&2; grep "Non-2xx" <<<"$out" >&2
  fi
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }' <<<"$out"
}

row() { # name rps p50 p99
  printf "| %s | %s | %s | %s |\n" "$1" "$2" "$3" "$4"
}

echo "warming up..." >&2
wrk -t"$THREADS" -c"$CONNS" -d2s "$UPSTREAM/" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d2s -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null

declare -A R
echo "direct..." >&2;            R[direct]=$(measure "$CONNS" "$UPSTREAM/")
echo "nginx..." >&2;             R[nginx]=$(measure "$CONNS" "http://127.0.0.1:$NGINX_PORT/")
echo "sidecar repeated..." >&2;  R[repeat]=$(measure "$CONNS" -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/")
echo "sidecar distinct..." >&2;  R[distinct]=$(measure "$CONNS" -s "$ROOT/benches/load/sidecar_tokens.lua" "http://127.0.0.1:$SIDECAR_PORT/" -- "$WORK/tokens")
if [ "$APACHE" = yes ]; then
  echo "apache..." >&2;          R[apache]=$(measure "$CONNS" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$APACHE_PORT/")
fi

# RSS on a fresh sidecar, so the distinct-token run's verified-token cache
# (10,000 entries) does not count against the connections.
kill "$SIDECAR_PID"; wait "$SIDECAR_PID" 2>/dev/null || true
RUST_LOG=warn "$SIDECAR_BIN" --listen "127.0.0.1:$SIDECAR_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --team-domain "$TEAM_DOMAIN" --audience "$AUD" --upstream "$UPSTREAM" >>"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!; PIDS+=("$SIDECAR_PID")
wait_for "$SIDECAR_PORT"
curl -fs -H "Cf-Access-Jwt-Assertion: $TOKEN" "http://127.0.0.1:$SIDECAR_PORT/" >/dev/null
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$SIDECAR_PID/status"; }
RSS_IDLE=$(rss_kib)
echo "sidecar with $MANY_CONNS connections..." >&2
wrk -t"$THREADS" -c"$MANY_CONNS" -d"$DURATION" -H "Cf-Access-Jwt-Assertion: $TOKEN" \
  "http://127.0.0.1:$SIDECAR_PORT/" >"$WORK/many.txt" &
WRK_PID=$!
RSS_PEAK=$RSS_IDLE
while kill -0 "$WRK_PID" 2>/dev/null; do
  r=$(rss_kib); [ "$r" -gt "$RSS_PEAK" ] && RSS_PEAK=$r
  sleep 0.2
done
MANY_RPS=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$WORK/many.txt")

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) cores, $(uname -r); upstream: hyper hello; $TOKENS distinct tokens"
echo
echo "| setup | requests/s | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
read -r rps p50 p99 <<<"${R[direct]}";   row "direct (hyper hello)" "$rps" "$p50" "$p99"; DIRECT_P99=$p99
read -r rps p50 p99 <<<"${R[nginx]}";    row "nginx proxy_pass" "$rps" "$p50" "$p99"; NGINX_RPS=$rps
read -r rps p50 p99 <<<"${R[repeat]}";   row "sidecar, repeated token" "$rps" "$p50" "$p99"; REPEAT_RPS=$rps; REPEAT_P99=$p99
read -r rps p50 p99 <<<"${R[distinct]}"; row "sidecar, distinct tokens" "$rps" "$p50" "$p99"
if [ "$APACHE" = yes ]; then
  read -r rps p50 p99 <<<"${R[apache]}"; row "Apache mod_oauth2" "$rps" "$p50" "$p99"; APACHE_RPS=$rps
else
  row "Apache mod_oauth2" "not installed" "" ""
fi
echo
echo "sidecar RSS: fresh $((RSS_IDLE / 1024)) MiB; peak with $MANY_CONNS keep-alive connections $((RSS_PEAK / 1024)) MiB ($MANY_RPS requests/s)"
awk -v s="$REPEAT_RPS" -v n="$NGINX_RPS" -v dp="$DIRECT_P99" -v sp="$REPEAT_P99" 'BEGIN {
  printf "sidecar/nginx requests/s: %.2f (target >= 0.8); p99 added over direct: %.3f ms (target <= 1)\n", s/n, sp-dp }'
if [ "$APACHE" = yes ]; then
  awk -v s="$REPEAT_RPS" -v a="$APACHE_RPS" 'BEGIN { printf "sidecar/Apache requests/s: %.2f (target >= 2)\n", s/a }'
fi
