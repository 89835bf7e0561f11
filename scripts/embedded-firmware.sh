#!/usr/bin/env bash
# Builds the bare-metal RISC-V firmware example (io-embedded/firmware) and runs it under QEMU:
# an mTLS client and server of onerecord-tls-embedded in one image (TLS 1.3 full and resumed,
# TLS 1.2, the embedded-io stream), printing heap/stack/instruction measurements. Exits
# non-zero when anything fails (QEMU's exit code comes from the firmware through the virt
# board's test device). Installs what it needs (idempotent): the Rust target, Debian's RISC-V
# GCC (ring's C code) and QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
target=riscv32imac-unknown-none-elf

rustup target add "$target" >/dev/null
need=()
command -v qemu-system-riscv32 >/dev/null || need+=(qemu-system-misc)
command -v riscv64-unknown-elf-gcc >/dev/null || need+=(gcc-riscv64-unknown-elf)
command -v riscv64-unknown-elf-size >/dev/null || need+=(binutils-riscv64-unknown-elf)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cd io-embedded/firmware
# The CC/AR/CFLAGS for ring come from io-embedded/firmware/.cargo/config.toml.
cargo build --release
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
elf="$target_dir/$target/release/onerecord-tls-firmware"

echo "== size (flash = text + rodata + data; static RAM = data + bss)"
riscv64-unknown-elf-size -A "$elf" | grep -E '^\.(text|rodata|data|bss|stack) '
# size-client / size-server: one role alone (size probes, not run).
riscv64-unknown-elf-size -B "$elf" "$target_dir/$target/release/size-client" \
    "$target_dir/$target/release/size-server"

echo "== run under qemu-system-riscv32 -machine virt -bios none"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
timeout 120 qemu-system-riscv32 -machine virt -bios none -nographic -monitor none \
    -serial stdio -icount shift=0 -kernel "$elf" </dev/null | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] || ! grep -q '^PASS' "$log"; then
    echo "firmware FAILED under QEMU (exit status $status)" >&2
    exit 1
fi
echo "firmware OK under QEMU"
