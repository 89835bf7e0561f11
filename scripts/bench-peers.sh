#!/usr/bin/env bash
# Loopback comparison of TLS servers with the same load generator, certificate and machine:
# the onerecord-gateway (identity responder, one worker), a plain rustls + mio server
# (bench/src/bin/rustls-mio-server.rs), nginx from Debian (one worker, `return 200`) and
# `openssl s_server -www`, one at a time, each for TLS and for mTLS. Prints ONE table with the
# ratio gateway ÷ peer for every figure; then `openssl s_time` as an independent client.
#
#   bash scripts/bench-peers.sh            # default run (about 4-5 minutes)
#   bash scripts/bench-peers.sh --quick    # tiny run (under a minute), checks the plumbing
#
# Options: --quick, --tls12 (TLS 1.2 only; default negotiates TLS 1.3), --duration T,
# --concurrency C, --idle K (mTLS idle connections), --stime T (s_time seconds),
# --peers "gateway rustls-mio nginx s_server", --out FILE (JSON lines kept), --no-build.
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
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=1; concurrency=4; idle=200; stime=1 ;;
        --tls12) tls12=1 ;;
        --duration) duration="$2"; shift ;;
        --concurrency) concurrency="$2"; shift ;;
        --idle) idle="$2"; shift ;;
        --stime) stime="$2"; shift ;;
        --peers) peers="$2"; shift ;;
        --out) out="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench-peers: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

# --- tools -------------------------------------------------------------------------------
need=()
command -v openssl >/dev/null || need+=(openssl)
if [[ " $peers " == *" nginx "* ]] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
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
for b in "$LG" "$GW" "$RS"; do
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

# start_server PEER AUTH PORT: sets $spid (the process to stop) and $mpids (to measure).
start_server() {
    local peer=$1 auth=$2 port=$3 log="$tmp/$1-$2.log"
    local mtls_gw=() mtls_rs=() mtls_ossl=() v13=()
    if [ "$auth" = mtls ]; then
        mtls_gw=(--client-ca "$pki/ca.pem" --require-client-cert)
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
            local d="$tmp/nginx-$auth" verify="" user=""
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
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $pki/server.pem;
        ssl_certificate_key $pki/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:20m;
        ssl_session_tickets on;
        $verify
        location / {
            default_type application/json;
            return 200 '{"status":"ok"}\n';
        }
    }
}
EOF
            "$NGINX" -p "$d" -c "$d/nginx.conf" >"$log" 2>&1 &
            spid=$! ;;
        *) echo "bench-peers: unknown peer $peer" >&2; exit 2 ;;
    esac
    server_pids+=("$spid")
    if ! wait_listening "$port" "$spid"; then
        echo "bench-peers: $peer did not start; log:" >&2
        cat "$log" "$tmp/nginx-$auth/error.log" 2>/dev/null | tail -20 >&2
        exit 1
    fi
    if [ "$peer" = nginx ]; then
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
echo "== runs (duration ${duration}s, concurrency $concurrency, idle $idle mTLS connections, s_time ${stime}s)"
for peer in $peers; do
    for auth in tls mtls; do
        port=$(free_port)
        start_server "$peer" "$auth" "$port"
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
            start_server "$peer" "$auth" "$port"
            dur=2 conc=32 loadgen "$peer" "$auth" idle --idle "$idle"
            stop_server
        fi
    done
done

echo
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
echo "== results: $started, commit $rev, $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(uname -r)"
echo "   bash scripts/bench-peers.sh $all_args"
echo "   loadgen: one client thread on the same machine; server CPU = utime+stime of the server"
echo "   process(es) over each measured window; latency is wall time seen by the client."
echo "   full/resumed: a new connection per request; keep-alive: requests on $concurrency open"
echo "   connections; idle: RSS with $idle idle mTLS connections on a fresh server."
"$LG" --table "$res"
if [ -s "$tmp/loadgen.err" ]; then
    echo "-- client messages (last lines):"
    tail -5 "$tmp/loadgen.err"
fi
if [ -n "$out" ]; then
    cp "$res" "$out"
    echo "results (JSON lines) in $out"
fi
