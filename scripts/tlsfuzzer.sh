#!/usr/bin/env bash
# Run tlsfuzzer's TLS 1.3 conformance scripts against the gateway and, in the same run,
# against the bare rustls baseline server (`rustls-mio-server` from bench/), and print one
# table: a probe that fails on both is rustls' behaviour; a probe that fails only on the
# gateway is ours to fix.
#
#     TLSFUZZER_DIR=path/to/tlsfuzzer bash scripts/tlsfuzzer.sh
#
# tlsfuzzer is not packaged: clone https://github.com/tlsfuzzer/tlsfuzzer (results in
# tests/README.md were taken at commit 14555fe) and `pip install --pre tlslite-ng ecdsa`.
# Both servers use the same throwaway RSA-2048 certificate (tlsfuzzer's scripts assume RSA)
# and answer HTTP. Takes about 8 minutes. Not run by CI (it needs the network to fetch
# tlsfuzzer).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TLSFUZZER_DIR:?set TLSFUZZER_DIR to a tlsfuzzer checkout}"

cargo build -q --release --bin onerecord-gateway -p onerecord-gateway
cargo build -q --release --bin rustls-mio-server -p onerecord-tls-bench

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
    -days 30 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(port)
rs=$(port)
target/release/onerecord-gateway server --listen "127.0.0.1:$gw" --workers 1 \
    --cert "$work/cert.pem" --key "$work/key.pem" >"$work/gw.log" 2>&1 &
pids+=($!)
target/release/rustls-mio-server --listen "127.0.0.1:$rs" \
    --cert "$work/cert.pem" --key "$work/key.pem" >"$work/rs.log" 2>&1 &
pids+=($!)
sleep 1

scripts=(ccs connection-abort conversation count-tickets ecdhe-curves empty-alert finished
    finished-plaintext hrr invalid-ciphers keyshare-omitted keyupdate large-number-of-extensions
    legacy-version multiple-ccs-messages no-unknown-groups nociphers record-layer-limits
    record-padding rsa-signatures serverhello-random session-resumption shuffled-extentions
    signature-algorithms symetric-ciphers unencrypted-alert unrecognised-groups
    version-negotiation zero-content-type zero-length-data 0rtt-garbage)

summary() { # log -> "pass/total"
    local t p
    t=$(grep -E '^TOTAL:' "$1" | awk '{print $2}')
    p=$(grep -E '^PASS:' "$1" | awk '{print $2}')
    echo "${p:-?}/${t:-?}"
}

printf '| %-28s | %-10s | %-10s |\n' "tlsfuzzer test-tls13-*" "gateway" "rustls"
printf '|%s|%s|%s|\n' "------------------------------" "------------" "------------"
for s in "${scripts[@]}"; do
    for side in gw rs; do
        p=$gw
        [ "$side" = rs ] && p=$rs
        (cd "$TLSFUZZER_DIR" && PYTHONPATH=. timeout 300 python3 "scripts/test-tls13-$s.py" \
            -h 127.0.0.1 -p "$p" >"$work/$side-$s.log" 2>&1) || true
    done
    printf '| %-28s | %-10s | %-10s |\n' "$s" "$(summary "$work/gw-$s.log")" "$(summary "$work/rs-$s.log")"
done
