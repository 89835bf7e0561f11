#!/usr/bin/env bash
# Instructions per in-memory handshake, server and client side counted separately, for the
# engine and for bare rustls (buffered API), with the ratio engine/rustls. Instruction counts
# do not depend on machine load, so they catch the engine's own overhead creeping up.
#
#   scripts/callgrind.sh [-n N] [-a] [scenario ...]
#
#   -n N   handshakes per run (default 100)
#   -a     also print, per scenario and side, the engine's top functions (inclusive
#          instructions per handshake) and its top self-cost functions
#   scenario names as in the criterion benches (bench/src/lib.rs, `Scenario::name`); default:
#          tls13_ecdsa_full tls13_ecdsa_mtls_full tls13_ecdsa_ticket
#          tls12_ecdsa_full tls12_ecdsa_id tls12_ecdsa_ticket
#
# Builds bench/examples/hs-count.rs (bench profile: optimized, with symbols) and runs it under
# `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*measured_<side>*`: only the
# named side's work inside the handshakes is counted (set-up and the priming handshake that
# fills the session caches are not). Output files stay in $CARGO_TARGET_DIR/callgrind (or
# target/callgrind) for callgrind_annotate. Installs valgrind with apt-get if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

n=100
annotate=0
while getopts "n:a" opt; do
    case "$opt" in
        n) n="$OPTARG" ;;
        a) annotate=1 ;;
        *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(tls13_ecdsa_full tls13_ecdsa_mtls_full tls13_ecdsa_ticket
        tls12_ecdsa_full tls12_ecdsa_id tls12_ecdsa_ticket)
fi

if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq valgrind >/dev/null
fi

build=(cargo build --profile bench -p onerecord-tls-bench --example hs-count)
exe=$("${build[@]}" --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*hs-count\)".*/\1/p' | tail -n 1) || true
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    "${build[@]}" >&2 || true
    echo "the build of hs-count failed" >&2
    exit 1
fi
out="${CARGO_TARGET_DIR:-target}/callgrind"
mkdir -p "$out"

# count <scenario> <engine|rustls> <server|client> -> instructions per handshake
count() {
    local file="$out/$1.$2.$3.out" log="$out/$1.$2.$3.log"
    if ! valgrind --tool=callgrind --callgrind-out-file="$file" --collect-atstart=no \
        "--toggle-collect=*measured_$3*" "$exe" "$1" "$2" "$n" >"$log" 2>&1; then
        echo "valgrind run failed, see $log" >&2
        exit 1
    fi
    local total
    total=$(sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$log")
    echo $((total / n))
}

# Rows of callgrind_annotate as "<instructions per handshake>  <function>", one per function.
# Inlining lists a function under several source files: self costs are added up, inclusive
# costs (first argument "max") take the largest.
rows() {
    local how="$1"
    shift
    callgrind_annotate --auto=no "$@" 2>/dev/null |
        awk -v n="$n" -v how="$how" '
            /^ *[0-9][0-9,]* +\(/ && !/PROGRAM TOTALS/ {
                c = $1; gsub(",", "", c)
                line = $0; sub(/^[^)]*\) +/, "", line); sub(/ \[[^]]*\]$/, "", line)
                i = index(line, ":"); fn = (i > 0 ? substr(line, i + 1) : line)
                if (!(fn in best)) { order[++k] = fn; best[fn] = 0 }
                if (how == "sum") best[fn] += c; else if (best[fn] < c) best[fn] = c
            }
            END { for (j = 1; j <= k; j++) printf "    %9d  %s\n", best[order[j]] / n, order[j] }'
}

top() {
    local file="$1"
    echo "    engine functions, inclusive (instructions per handshake):"
    rows max --inclusive=yes "$file" | grep 'onerecord_tls::' | grep -v 'onerecord_tls_bench' |
        sort -k1,1nr | head -n 15 || true
    echo "    all functions, self cost (instructions per handshake):"
    rows sum "$file" | sort -k1,1nr | head -n 15 || true
}

printf "%-24s %-6s %14s %14s %8s\n" scenario side "engine Ir/hs" "rustls Ir/hs" "ratio"
for sc in "${scenarios[@]}"; do
    for side in server client; do
        e=$(count "$sc" engine "$side")
        r=$(count "$sc" rustls "$side")
        ratio=$(awk -v e="$e" -v r="$r" 'BEGIN { printf "%.3f", e / r }')
        printf "%-24s %-6s %14d %14d %8s\n" "$sc" "$side" "$e" "$r" "$ratio"
        if [ "$annotate" = 1 ]; then
            top "$out/$sc.engine.$side.out"
        fi
    done
done
echo "($n handshakes per run; callgrind files in $out)"
