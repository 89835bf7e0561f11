#!/usr/bin/env bash
# Short fuzz run of every target in fuzz/ (CI), or a long one: `scripts/fuzz-smoke.sh [SECONDS]`
# (default 30 s per target). Installs what it needs when missing (the nightly toolchain with
# the minimal profile, cargo-fuzz), builds the targets, generates the seed corpora from real
# handshakes (fuzz/src/bin/gen_corpus.rs), runs each target for SECONDS with memory limits,
# and fails if any target crashed, leaked past the RSS limit, allocated past the malloc limit
# or timed out on one input. Idempotent; the corpora grow in fuzz/corpus/ across runs.
#
# Environment: FUZZ_TARGETS (space-separated subset), CARGO_TARGET_DIR (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
targets="${FUZZ_TARGETS:-server_stream client_stream handshake_mutation client_hello pem_policy cert_info fixed_buffers embedded_tls}"

# Toolchain: nightly (libFuzzer needs -Zsanitizer and coverage flags). If no nightly can be
# installed, fall back to the default toolchain with RUSTC_BOOTSTRAP=1 (same flags).
toolchain="+nightly"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        echo "fuzz-smoke: no nightly toolchain; using the default one with RUSTC_BOOTSTRAP=1"
        toolchain=""
        export RUSTC_BOOTSTRAP=1
    fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
host="$(rustc ${toolchain} -vV | sed -n 's/^host: //p')"
# shellcheck disable=SC2086
cargo ${toolchain} fuzz build -O --target-dir "$CARGO_TARGET_DIR"
bin="$CARGO_TARGET_DIR/$host/release"

"$bin/gen-corpus" seeds

mkdir -p logs
failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== fuzz $t for ${secs}s"
    start=$(date +%s)
    rc=0
    "$bin/$t" "corpus/$t" "seeds/$t" \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=20 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"logs/$t.log" 2>&1 || rc=$?
    done_line="$(grep -E 'DONE +cov:' "logs/$t.log" | tail -1 || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)"
    echo "   rc=$rc time=$(($(date +%s) - start))s execs=${execs:-?} ${done_line}"
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "logs/$t.log" | head -20 || true
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/logs/)"
    exit 1
fi
echo "fuzz-smoke: all targets ran ${secs}s without a crash"
