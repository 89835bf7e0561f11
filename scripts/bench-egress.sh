#!/usr/bin/env bash
# Egress benchmark: what a request to a partner costs when the application sends it through
# the gateway's egress proxy (pooled, kept-alive mTLS connections), against the same request
# opening its own new mTLS connection with a full handshake, and against one resuming a
# session; client-side and partner-side CPU per request, side by side in one run.
#
# - partner: `onerecord-gateway server --workers 1 --ca ca.pem --require-client-cert` (its
#   identity responder answers each request itself), with `--metrics` on loopback: its
#   `onerecord_connections_accepted_total` before and after each run shows the pooling;
# - pooled: `onerecord-loadgen --proxy` (the application: plain kept-alive HTTP/1.1
#   connections, `GET http://localhost:PORT/`) -> `onerecord-gateway client --workers 1
#   --listen ... --ca --cert --key` (the egress proxy) -> the partner; client side = the load
#   generator's CPU + the egress gateway's CPU;
# - full: `onerecord-loadgen --mode full` straight to the partner, a new mTLS connection and a
#   full handshake per request; client side = the load generator's CPU;
# - resumed: `onerecord-loadgen --mode resumed`, a new mTLS connection resuming per request;
# - keepalive (the reference): `onerecord-loadgen --mode keepalive` straight to the partner,
#   requests one after another on C kept-alive mTLS connections: what a pooled request costs
#   the partner without the proxy in between.
#
# Partner side = the partner process's CPU (utime+stime from /proc/PID/stat) in all three.
# Each round runs the four kinds at every --concurrency, in an order that rotates each round;
# a cell of the table is the median over the rounds (`onerecord-loadgen --egress-table`).
#
#   bash scripts/bench-egress.sh           # 3 rounds, c = 8 and 64, 4 s per run (about 3 minutes)
#   bash scripts/bench-egress.sh --quick   # one round of 1 s runs (about 20 s)
#
# Options: --quick, --rounds N (3), --concurrency "8 64", --duration T (4), --out FILE (JSON
# lines kept), --no-build. TLS 1.3 is what every path negotiates.
#
# Everything listens on 127.0.0.1 only, in a temporary directory; every process this script
# starts is stopped on exit. Client and partner share the machine's cores; the load average
# is printed before and after, since other jobs change the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

all_args="$*"
duration=4
rounds=3
concurrency="8 64"
out=""
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) duration=1; rounds=1 ;;
        --rounds) rounds="$2"; shift ;;
        --concurrency) concurrency="$2"; shift ;;
        --duration) duration="$2"; shift ;;
        --out) out="$2"; shift ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "bench-egress: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
    echo "bench-egress: --rounds must be a positive number" >&2
    exit 2
fi
command -v curl >/dev/null || { echo "bench-egress: curl is needed" >&2; exit 2; }

bin="${CARGO_TARGET_DIR:-target}/release"
if [ "$build" = 1 ]; then
    echo "== building (release)"
    cargo build --release -q -p onerecord-tls-bench --bin onerecord-loadgen \
        -p onerecord-gateway --bin onerecord-gateway
fi
LG="$bin/onerecord-loadgen"
GW="$bin/onerecord-gateway"
for b in "$LG" "$GW"; do
    [ -x "$b" ] || { echo "bench-egress: $b missing (build first)" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tmp=$(mktemp -d /tmp/bench-egress.XXXXXX)
res="$tmp/egress.jsonl"
: >"$res"
pids=()
cleanup() {
    for p in "${pids[@]}"; do
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
    echo "bench-egress: no free port" >&2
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

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

started=$(date -u +%FT%TZ)
load_before=$(loadavg)

# --- the partner ---------------------------------------------------------------------------
port=$(free_port)
mport=$(free_port)
RUST_LOG=warn "$GW" server --listen "127.0.0.1:$port" --cert "$pki/server.pem" \
    --key "$pki/server.key" --ca "$pki/ca.pem" --require-client-cert --workers 1 \
    --max-connections 30000 --idle-timeout 600 --metrics "127.0.0.1:$mport" \
    >"$tmp/partner.log" 2>&1 &
partner=$!
pids+=("$partner")
if ! wait_listening "$port" "$partner" || ! wait_listening "$mport" "$partner"; then
    echo "bench-egress: the partner did not start:" >&2
    cat "$tmp/partner.log" >&2
    exit 1
fi

# --- the egress proxy ----------------------------------------------------------------------
eport=$(free_port)
emport=$(free_port)
egress_args=(client --listen "127.0.0.1:$eport" --ca "$pki/ca.pem" --cert "$pki/client.pem"
    --key "$pki/client.key" --workers 1 --max-connections 30000 --idle-timeout 600
    --allow-destination "localhost:$port" --resolve "localhost:$port:127.0.0.1"
    --metrics "127.0.0.1:$emport")
RUST_LOG=warn "$GW" "${egress_args[@]}" >"$tmp/egress.log" 2>&1 &
egress=$!
pids+=("$egress")
if ! wait_listening "$eport" "$egress"; then
    echo "bench-egress: the egress proxy did not start:" >&2
    cat "$tmp/egress.log" >&2
    exit 1
fi

metric() { # port name -> the value of an unlabelled metric
    curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v m="$2" '$1 == m { v = $2 } END { print v }'
}
egress_metric() { # name kind -> the value for the partner's destination (and kind)
    curl -sS --max-time 5 "http://127.0.0.1:$emport/metrics" 2>/dev/null |
        awk -v m="$1" -v d="destination=\"localhost:$port\"" -v k="$2" \
            'index($1, m "{") == 1 && index($1, d) && (k == "" || index($1, "kind=\"" k "\"")) { v = $2 } END { print v }'
}
accepted() { metric "$mport" onerecord_connections_accepted_total; }

# One request through the proxy with curl, as an application sends it: it must come back 200
# from the partner's identity responder, with our client certificate verified.
code=$(curl -sS -o "$tmp/check" -w '%{http_code}' --max-time 10 -x "http://127.0.0.1:$eport" \
    "http://localhost:$port/" 2>&1) || true
if [ "$code" != 200 ] || ! grep -q '"verified": *true' "$tmp/check"; then
    echo "bench-egress: a curl request through the egress proxy got '$code':" >&2
    head -c 300 "$tmp/check" >&2 || true
    cat "$tmp/egress.log" >&2
    exit 1
fi
a0=$(accepted)
if [ -z "$a0" ]; then
    echo "bench-egress: no onerecord_connections_accepted_total on the partner's metrics" >&2
    exit 1
fi

run() { # kind concurrency round
    local kind=$1 conc=$2 round=$3 args line rc=0 c0 c1
    case "$kind" in
        pooled) args=(--proxy "127.0.0.1:$eport" --proxy-pid "$egress") ;;
        *) args=(--ca "$pki/ca.pem" --cert "$pki/client.pem" --key "$pki/client.key"
            --mode "$kind") ;;
    esac
    c0=$(accepted)
    line=$("$LG" --connect "127.0.0.1:$port" --server-pid "$partner" "${args[@]}" \
        --concurrency "$conc" --duration "$duration" --label "$kind" --json \
        2>>"$tmp/loadgen.err") || rc=$?
    c1=$(accepted)
    if [ -n "$line" ]; then
        echo "${line%\}},\"round\":$round,\"partner_conns\":$((c1 - c0)),\"loadavg\":\"$(loadavg)\"}" >>"$res"
    fi
    printf '   round %s %-9s c=%-3s partner conns %-6s %s\n' "$round" "$kind" "$conc" \
        "$((c1 - c0))" "$(echo "$line" | grep -o '"failures":[0-9]*' || echo "no result (exit $rc)")"
}

echo "== egress (mTLS, ${duration}s per run, concurrency $concurrency, $rounds round(s)); load average $load_before"
kinds=(pooled full resumed keepalive)
for round in $(seq 1 "$rounds"); do
    for conc in $concurrency; do
        for k in 0 1 2 3; do
            run "${kinds[$(((k + round - 1) % 4))]}" "$conc" "$round"
        done
    done
    echo "   load average after round $round: $(loadavg)"
done

echo
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
echo "== results: $started, commit $rev, $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(uname -r)"
echo "   bash scripts/bench-egress.sh $all_args"
echo "   load average (1, 5, 15 min) before: $load_before; after: $(loadavg)"
echo "   partner: gateway server, identity responder, one worker, mTLS required; egress proxy:"
echo "   gateway client, one worker; the load generator is one thread; all on the same cores."
echo "   egress proxy to the partner, whole run: connections $(egress_metric onerecord_egress_connections_total ""),"\
    "handshakes full $(egress_metric onerecord_egress_handshakes_total full) /" \
    "resumed $(egress_metric onerecord_egress_handshakes_total resumed)," \
    "requests $(egress_metric onerecord_egress_requests_total "")"
"$LG" --egress-table "$res"
if [ -s "$tmp/loadgen.err" ]; then
    echo "-- client messages (last lines):"
    tail -5 "$tmp/loadgen.err"
fi
if [ -n "$out" ]; then
    cp "$res" "$out"
    echo "results (JSON lines) in $out"
fi
