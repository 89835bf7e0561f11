#!/usr/bin/env bash
# Scan the gateway with testssl.sh (a third-party TLS scanner, from Debian's packages) and fail
# on any finding of severity MEDIUM or worse, on any protocol older than TLS 1.2, and on any
# non-AEAD or non-forward-secret cipher. Two gateways are scanned: a plain TLS server (tickets,
# session IDs, HTTP headers visible) and the mTLS dev server.
#
#     bash scripts/conformance.sh            # uses target/debug/onerecord-gateway (builds it)
#     GATEWAY=target/release/onerecord-gateway bash scripts/conformance.sh
#
# Findings about the test certificate itself rather than the engine are not counted:
# `cert_revocation` (the throwaway certificate names no CRL/OCSP URL), `DNS_CAArecord`
# (loopback has no DNS) and chain trust (the scan is given the throwaway CA with --add-ca).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v testssl >/dev/null && ! command -v testssl.sh >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq testssl.sh >/dev/null
fi
TESTSSL=$(command -v testssl || command -v testssl.sh)

GATEWAY=${GATEWAY:-}
if [ -z "$GATEWAY" ]; then
    cargo build -q --bin onerecord-gateway
    GATEWAY=target/debug/onerecord-gateway
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "gateway on port $1 did not start" >&2
    return 1
}

mtls_port=$(free_port)
"$GATEWAY" dev --dir "$work/pki" --listen "127.0.0.1:$mtls_port" --workers 1 >"$work/mtls.log" 2>&1 &
pids+=($!)
wait_port "$mtls_port"

tls_port=$(free_port)
"$GATEWAY" server --listen "127.0.0.1:$tls_port" --workers 1 \
    --cert "$work/pki/server.pem" --key "$work/pki/server.key" >"$work/tls.log" 2>&1 &
pids+=($!)
wait_port "$tls_port"

status=0
for target in "tls:$tls_port" "mtls:$mtls_port"; do
    name=${target%%:*}
    port=${target##*:}
    json="$work/$name.json"
    echo "== testssl.sh against the gateway ($name, 127.0.0.1:$port)"
    # testssl's exit code counts findings of every kind; the JSON is judged below instead.
    timeout 600 "$TESTSSL" --quiet --color 0 --warnings off --add-ca "$work/pki/ca.pem" \
        --jsonfile "$json" "127.0.0.1:$port" >"$work/$name.txt" 2>&1 || true
    if ! python3 - "$json" "$name" <<'EOF'; then status=1; fi
import json, sys
path, name = sys.argv[1], sys.argv[2]
findings = json.load(open(path))
ignored = {"cert_revocation", "DNS_CAArecord"}
bad = [f for f in findings
       if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and f["id"] not in ignored]
by_id = {f["id"]: f["finding"] for f in findings}
must = {
    "SSLv2": "not offered", "SSLv3": "not offered",
    "TLS1": "not offered", "TLS1_1": "not offered",
    "TLS1_2": "offered", "TLS1_3": "offered",
    "cipherlist_NULL": "not offered", "cipherlist_aNULL": "not offered",
    "cipherlist_EXPORT": "not offered", "cipherlist_LOW": "not offered",
    "cipherlist_3DES_IDEA": "not offered", "cipherlist_AVERAGE": "not offered",
    "cipherlist_STRONG": "offered",
    "secure_renego": "supported",
}
for key, want in must.items():
    got = by_id.get(key, "(missing)")
    if not got.startswith(want):
        bad.append({"severity": "EXPECT", "id": key, "finding": f"{got!r}, expected {want!r}"})
counts = {}
for f in findings:
    counts[f["severity"]] = counts.get(f["severity"], 0) + 1
print(f"{name}: {len(findings)} checks {counts}; failing: {len(bad)}")
for f in bad:
    print(f"  {f['severity']} {f['id']}: {f['finding']}")
sys.exit(1 if bad else 0)
EOF
done
exit $status
