#!/usr/bin/env bash
# Loopback comparison of TLS servers with the same load generator, certificate and machine:
# the onerecord-gateway (identity responder, one worker), a plain rustls + mio server
# (bench/src/bin/rustls-mio-server.rs), nginx from Debian (one worker, `return 200`) and
# `openssl s_server -www`, one at a time, each for TLS and for mTLS. Prints ONE table with the
# ratio gateway ÷ peer for every figure; then `openssl s_time` as an independent client.
#
# Then the front door: one plain HTTP/1.1 keep-alive upstream (bench/src/bin/http-upstream.rs)
# behind three mTLS servers side by side: nginx as reverse proxy (`proxy_pass` to a keepalive
# `upstream {}`, X-Client-Cert: $ssl_client_escaped_cert), the gateway in HTTP mode
# (`--upstream http://... --client-cert-header x-client-cert`) and the gateway's identity
# responder (no upstream; the reference). CPU of the proxy process only per kept-alive
# request and per new mTLS connection with one request, at each --fd-concurrency, medians of
# --rounds rounds with the peers in rotating order; one table with gateway-http ÷ nginx and
# gateway-http ÷ identity. A peer that does not start is skipped with a message.
#
#   bash scripts/bench-peers.sh                   # default run (about 8 minutes)
#   bash scripts/bench-peers.sh --quick           # tiny run (about a minute), checks the plumbing
#   bash scripts/bench-peers.sh --frontdoor-only  # only the front door (about 4 minutes)
#
# Options: --quick, --tls12 (TLS 1.2 only; default negotiates TLS 1.3), --duration T,
# --concurrency C, --idle K (mTLS idle connections), --stime T (s_time seconds),
# --peers "gateway rustls-mio nginx s_server", --out FILE (JSON lines kept), --no-build,
# --no-frontdoor, --frontdoor-only, --rounds N (front door, default 3),
# --fd-concurrency "8 64", --fd-peers "nginx-proxy gateway-http gateway-identity".
#
# Installs nginx-light (Debian) when nginx is missing. Everything listens on 127.0.0.1 only,
# in a temporary directory; every server this script starts is stopped on exit. The figures
# are server CPU from /proc/PID/stat (utime+stime, 10 ms ticks) over each measured window,
# and server RSS from /proc/PID/status; client and server share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."

all_args="$*"
duration=4
concurrency=16
idle=10000
stime=3
peers="gateway rustls-mio nginx s_server"
tls12=0
out=""
build=1
frontdoor=1
tls_peers=1
rounds=3
fd_concurrency="8 64"
fd_peers="nginx-proxy gateway-http gateway-identity"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=1; concurrency=4; idle=200; stime=1; rounds=1; fd_concurrency="4 16" ;;
        --tls12) tls12=1 ;;
        --duration) duration="$2"; shift ;;
        --concurrency) concurrency="$2"; shift ;;
        --idle) idle="$2"; shift ;;
        --stime) stime="$2"; shift ;;
        --peers) peers="$2"; shift ;;
        --out) out="$2"; shift ;;
        --no-build) build=0 ;;
        --no-frontdoor) frontdoor=0 ;;
        --frontdoor-only) tls_peers=0 ;;
        --rounds) rounds="$2"; shift ;;
        --fd-concurrency) fd_concurrency="$2"; shift ;;
        --fd-peers) fd_peers="$2"; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "bench-peers: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$tls_peers" = 0 ] && peers="" && frontdoor=1
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench-peers: --rounds must be a positive number" >&2
    exit 2
fi

# --- tools -------------------------------------------------------------------------------
need=()
command -v openssl >/dev/null || need+=(openssl)
want_nginx=0
[[ " $peers " == *" nginx "* ]] && want_nginx=1
[ "$frontdoor" = 1 ] && [[ " $fd_peers " == *" nginx-proxy "* ]] && want_nginx=1
if [ "$want_nginx" = 1 ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    need+=(nginx-light)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

bin="${CARGO_TARGET_DIR:-target}/release"
if [ "$build" = 1 ]; then
    echo "== building (release)"
    cargo build --release -q -p onerecord-tls-bench -p onerecord-gateway --bins
fi
LG="$bin/onerecord-loadgen"
GW="$bin/onerecord-gateway"
RS="$bin/rustls-mio-server"
UP="$bin/http-upstream"
for b in "$LG" "$GW" "$RS" "$UP"; do
    [ -x "$b" ] || { echo "bench-peers: $b missing (build first)" >&2; exit 2; }
done

# Idle connections need descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d /tmp/bench-peers.XXXXXX)
res="$tmp/results.jsonl"
: >"$res"
server_pids=()
cleanup() {
    for p in "${server_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"$LG" --gen-pki "$tmp/pki"
pki="$tmp/pki"

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 10000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "bench-peers: no free port" >&2
    exit 2
}

wait_listening() { # port pid
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

cpu_ticks() { # pids... -> utime+stime ticks summed (fields after the command name)
    local t=0 p
    for p in "$@"; do
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$t"
}

# nginx_conf DIR PORT AUTH LOCATION: an nginx configuration with one worker, serving
# 127.0.0.1:PORT with TLS (AUTH mtls: a client certificate required); LOCATION is the body of
# `location /`; extra http-level directives (an `upstream {}` block) come in $nginx_http.
nginx_conf() {
    local d=$1 port=$2 auth=$3 location=$4 verify="" user=""
    mkdir -p "$d"
    [ "$auth" = mtls ] && verify="ssl_verify_client on; ssl_client_certificate $pki/ca.pem;"
    [ "$(id -u)" = 0 ] && user="user root;"
    cat >"$d/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 40000;
events { worker_connections 30000; }
http {
    access_log off;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    ${nginx_http:-}
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $pki/server.pem;
        ssl_certificate_key $pki/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:20m;
        ssl_session_tickets on;
        $verify
        location / {
$location
        }
    }
}
EOF
}

# start_server PEER AUTH PORT: sets $spid (the process to stop) and $mpids (to measure);
# returns 1 (after printing the log) when the server did not start.
start_server() {
    local peer=$1 auth=$2 port=$3 log="$tmp/$1-$2.log"
    local mtls_gw=() mtls_rs=() mtls_ossl=() v13=()
    if [ "$auth" = mtls ]; then
        mtls_gw=(--ca "$pki/ca.pem" --require-client-cert)
        mtls_rs=(--client-ca "$pki/ca.pem")
        mtls_ossl=(-Verify 1 -CAfile "$pki/ca.pem")
    fi
    case "$peer" in
        gateway)
            RUST_LOG=warn "$GW" server --listen "127.0.0.1:$port" --cert "$pki/server.pem" \
                --key "$pki/server.key" --workers 1 --max-connections 30000 \
                --idle-timeout 600 "${mtls_gw[@]}" >"$log" 2>&1 &
            spid=$!; mpids=$spid ;;
        rustls-mio)
            "$RS" --listen "127.0.0.1:$port" --cert "$pki/server.pem" --key "$pki/server.key" \
                "${mtls_rs[@]}" >"$log" 2>&1 &
            spid=$!; mpids=$spid ;;
        s_server)
            openssl s_server -accept "127.0.0.1:$port" -cert "$pki/server.pem" \
                -key "$pki/server.key" -www -quiet "${mtls_ossl[@]}" >"$log" 2>&1 </dev/null &
            spid=$!; mpids=$spid ;;
        nginx)
            nginx_http="" nginx_conf "$tmp/nginx-$auth" "$port" "$auth" \
                "            default_type application/json;
            return 200 '{\"status\":\"ok\"}\n';"
            "$NGINX" -p "$tmp/nginx-$auth" -c "$tmp/nginx-$auth/nginx.conf" >"$log" 2>&1 &
            spid=$! ;;
        nginx-proxy)
            # The same job as the gateway in HTTP mode: verify the client certificate, pass it
            # URL-encoded in X-Client-Cert, drop a forged X-Forwarded-Client-Cert, set the
            # X-Forwarded-* headers, reuse kept-alive upstream connections.
            nginx_http="upstream frontdoor {
        server 127.0.0.1:$up_port;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }" nginx_conf "$tmp/nginx-proxy-$auth" "$port" "$auth" \
                "            proxy_pass http://frontdoor;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Client-Cert \$ssl_client_escaped_cert;
            proxy_set_header X-Forwarded-Client-Cert \"\";
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$host;"
            "$NGINX" -p "$tmp/nginx-proxy-$auth" -c "$tmp/nginx-proxy-$auth/nginx.conf" >"$log" 2>&1 &
            spid=$! ;;
        gateway-http)
            RUST_LOG=warn "$GW" server --listen "127.0.0.1:$port" --cert "$pki/server.pem" \
                --key "$pki/server.key" --workers 1 --max-connections 30000 \
                --idle-timeout 600 --upstream "http://127.0.0.1:$up_port" \
                --client-cert-header x-client-cert "${mtls_gw[@]}" >"$log" 2>&1 &
            spid=$!; mpids=$spid ;;
        gateway-identity)
            RUST_LOG=warn "$GW" server --listen "127.0.0.1:$port" --cert "$pki/server.pem" \
                --key "$pki/server.key" --workers 1 --max-connections 30000 \
                --idle-timeout 600 "${mtls_gw[@]}" >"$log" 2>&1 &
            spid=$!; mpids=$spid ;;
        *) echo "bench-peers: unknown peer $peer" >&2; exit 2 ;;
    esac
    server_pids+=("$spid")
    if ! wait_listening "$port" "$spid"; then
        echo "bench-peers: $peer did not start; log:" >&2
        cat "$log" "$tmp/$peer-$auth/error.log" 2>/dev/null | tail -20 >&2
        kill "$spid" 2>/dev/null || true
        return 1
    fi
    if [ "$peer" = nginx ] || [ "$peer" = nginx-proxy ]; then
        local w
        w=$(pgrep -P "$spid" | head -1)
        mpids="$spid $w"
    fi
}

stop_server() {
    kill "$spid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
}

loadgen() { # peer auth mode [extra...]
    local peer=$1 auth=$2 mode=$3
    shift 3
    # $dur and $conc override --duration and --concurrency for one call.
    local args=(--connect "127.0.0.1:$port" --ca "$pki/ca.pem" --mode "$mode"
        --concurrency "${conc:-$concurrency}" --duration "${dur:-$duration}" --label "$peer" --json)
    [ "$auth" = mtls ] && args+=(--cert "$pki/client.pem" --key "$pki/client.key")
    [ "$tls12" = 1 ] && args+=(--tls12)
    for p in $mpids; do args+=(--server-pid "$p"); done
    local line rc=0
    line=$("$LG" "${args[@]}" "$@" 2>>"$tmp/loadgen.err") || rc=$?
    if [ -n "$line" ]; then
        echo "$line" >>"$res"
    fi
    printf '   %-9s %-4s %-9s %s\n' "$peer" "$auth" "$mode" \
        "$(echo "$line" | grep -o '"failures":[0-9]*' || echo "no result (exit $rc)")"
}

s_time() { # peer auth new|reuse
    local peer=$1 auth=$2 kind=$3 args=() t0 t1 c0 c1 text n
    args=(-connect "127.0.0.1:$port" "-$kind" -time "$stime" -www / -CAfile "$pki/ca.pem")
    [ "$auth" = mtls ] && args+=(-cert "$pki/client.pem" -key "$pki/client.key")
    [ "$tls12" = 1 ] && args+=(-tls1_2)
    c0=$(cpu_ticks $mpids); t0=$(date +%s.%N)
    text=$(timeout $((stime * 4 + 20)) openssl s_time "${args[@]}" 2>&1 || true)
    t1=$(date +%s.%N); c1=$(cpu_ticks $mpids)
    n=$(echo "$text" | sed -n 's/^\([0-9]*\) connections in [0-9.]* real seconds.*/\1/p' | tail -1)
    if [ -z "$n" ] || [ "$n" = 0 ]; then
        printf '   %-9s %-4s s_time %-5s no result\n' "$peer" "$auth" "$kind"
        echo "$text" | tail -3 >>"$tmp/loadgen.err"
        return
    fi
    awk -v peer="$peer" -v auth="$auth" -v kind="$kind" -v n="$n" -v t0="$t0" -v t1="$t1" \
        -v cpu=$((c1 - c0)) 'BEGIN {
            printf "{\"label\":\"%s\",\"kind\":\"s_time\",\"auth\":\"%s\",\"mode\":\"%s\",", peer, auth, kind
            printf "\"connections\":%d,\"conns_per_s\":%.1f,\"server_cpu_us_per_conn\":%.1f}\n", n, n / (t1 - t0), cpu * 10000 / n
        }' >>"$res"
    printf '   %-9s %-4s s_time %-5s %s connections\n' "$peer" "$auth" "$kind" "$n"
}

started=$(date -u +%FT%TZ)
[ -n "$peers" ] && echo "== runs (duration ${duration}s, concurrency $concurrency, idle $idle mTLS connections, s_time ${stime}s)"
for peer in $peers; do
    for auth in tls mtls; do
        port=$(free_port)
        start_server "$peer" "$auth" "$port" || exit 1
        loadgen "$peer" "$auth" full
        loadgen "$peer" "$auth" resumed
        if [ "$peer" != s_server ]; then # s_server -www answers HTTP/1.0 and closes
            loadgen "$peer" "$auth" keepalive
        fi
        s_time "$peer" "$auth" new
        s_time "$peer" "$auth" reuse
        stop_server
        if [ "$auth" = mtls ] && [ "$peer" != s_server ]; then
            # Memory per idle connection on a fresh server: mTLS, the costly case.
            port=$(free_port)
            start_server "$peer" "$auth" "$port" || exit 1
            dur=2 conc=32 loadgen "$peer" "$auth" idle --idle "$idle"
            stop_server
        fi
    done
done

# --- front door: reverse proxies with mTLS in front of one plain HTTP/1.1 upstream ---------
fdres="$tmp/frontdoor.jsonl"
: >"$fdres"
up_port=""
declare -A fd_port fd_mpids
fd_up=()

upstream_conns() { # TCP connections the upstream accepted so far
    local n
    n=$(sed -n 's/.*"connections": *\([0-9]*\).*/\1/p' "$tmp/upstream.json" 2>/dev/null)
    echo "${n:-0}"
}

# check_proxy PEER PORT: one request through it with curl (mTLS), which must get the
# upstream's 200: a proxy that does not forward, or forwards without the client certificate
# header (the upstream then answers 400), is not measured.
check_proxy() {
    local peer=$1 port=$2 code
    command -v curl >/dev/null || return 0
    code=$(curl -sS -o "$tmp/fd-check" -w '%{http_code}' --max-time 10 --cacert "$pki/ca.pem" \
        --cert "$pki/client.pem" --key "$pki/client.key" \
        --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/" 2>>"$tmp/loadgen.err") || true
    if [ "$code" != 200 ]; then
        echo "bench-peers: front door: skipping $peer: a curl request through it got" \
            "'$code' $(head -c 200 "$tmp/fd-check" 2>/dev/null | tr -d '\r' | tr '\n' ' ')" >&2
        return 1
    fi
}

fd_run() { # peer mode concurrency round
    local peer=$1 mode=$2 conc=$3 round=$4 args line rc=0 u0 u1 up=""
    args=(--connect "127.0.0.1:${fd_port[$peer]}" --ca "$pki/ca.pem" --cert "$pki/client.pem"
        --key "$pki/client.key" --mode "$mode" --concurrency "$conc" --duration "$duration"
        --label "$peer" --json)
    [ "$tls12" = 1 ] && args+=(--tls12)
    for p in ${fd_mpids[$peer]}; do args+=(--server-pid "$p"); done
    u0=$(upstream_conns)
    line=$("$LG" "${args[@]}" 2>>"$tmp/loadgen.err") || rc=$?
    sleep 0.3 # the upstream rewrites its counts every 100 ms
    u1=$(upstream_conns)
    if [ -n "$line" ]; then
        [ "$peer" != gateway-identity ] && up=",\"upstream_conns\":$((u1 - u0))"
        echo "${line%\}},\"round\":$round$up}" >>"$fdres"
    fi
    printf '   round %s %-16s %-9s c=%-3s %s\n' "$round" "$peer" "$mode" "$conc" \
        "$(echo "$line" | grep -o '"failures":[0-9]*' || echo "no result (exit $rc)")"
}

if [ "$frontdoor" = 1 ]; then
    echo "== front door (mTLS, duration ${duration}s, concurrency $fd_concurrency, $rounds round(s))"
    # The upstream answers 400 to a request without the client certificate header the
    # proxies are configured to add.
    "$UP" --listen 127.0.0.1:0 --stats "$tmp/upstream.json" --require-header x-client-cert \
        --require-header x-forwarded-for 2>"$tmp/upstream.log" &
    up_pid=$!
    server_pids+=("$up_pid")
    for _ in $(seq 1 200); do
        up_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/upstream.log")
        [ -n "$up_port" ] && break
        kill -0 "$up_pid" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$up_port" ]; then
        echo "bench-peers: http-upstream did not start:" >&2
        cat "$tmp/upstream.log" >&2
        exit 1
    fi
    for peer in $fd_peers; do
        port=$(free_port)
        if ! start_server "$peer" mtls "$port"; then
            echo "bench-peers: front door: skipping $peer (it did not start; its log is above)" >&2
            continue
        fi
        if ! check_proxy "$peer" "$port"; then
            stop_server
            continue
        fi
        fd_port[$peer]=$port
        fd_mpids[$peer]=$mpids
        fd_up+=("$peer")
    done
    # Rounds alternate the peers (the order rotates every round) so that a slow phase of the
    # machine does not fall on one peer; every run measures one peer alone.
    for round in $(seq 1 "$rounds"); do
        n=${#fd_up[@]}
        for conc in $fd_concurrency; do
            for mode in keepalive full; do
                for k in $(seq 0 $((n - 1))); do
                    fd_run "${fd_up[$(((k + round - 1) % n))]}" "$mode" "$conc" "$round"
                done
            done
        done
    done
fi

echo
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
echo "== results: $started, commit $rev, $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(uname -r)"
echo "   bash scripts/bench-peers.sh $all_args"
echo "   loadgen: one client thread on the same machine; server CPU = utime+stime of the server"
echo "   process(es) over each measured window; latency is wall time seen by the client."
if [ -n "$peers" ]; then
    echo "   full/resumed: a new connection per request; keep-alive: requests on $concurrency open"
    echo "   connections; idle: RSS with $idle idle mTLS connections on a fresh server."
    "$LG" --table "$res"
fi
if [ "$frontdoor" = 1 ]; then
    echo
    echo "   front door: mTLS ($([ "$tls12" = 1 ] && echo "TLS 1.2" || echo "TLS 1.3")), one worker per proxy, upstream bench/src/bin/http-upstream.rs on"
    echo "   127.0.0.1:$up_port (not measured); keep-alive: requests on C open client connections;"
    echo "   new mTLS conn: a full handshake and one request per connection; upstream conns: TCP"
    echo "   connections the upstream accepted during the run (warm-up included; a proxy replaces"
    echo "   the upstream connections of requests cut off when the load generator stops)."
    "$LG" --frontdoor-table "$fdres"
fi
if [ -s "$tmp/loadgen.err" ]; then
    echo "-- client messages (last lines):"
    tail -5 "$tmp/loadgen.err"
fi
if [ -n "$out" ]; then
    cp "$res" "$out"
    cp "$fdres" "$out.frontdoor"
    echo "results (JSON lines) in $out and $out.frontdoor (front door)"
fi
