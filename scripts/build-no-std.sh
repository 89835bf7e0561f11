#!/usr/bin/env bash
# Builds the core without std for a bare-metal RISC-V target (riscv32imac-unknown-none-elf).
# ring compiles C for the target, so it needs the RISC-V GCC and freestanding flags.
set -euo pipefail
cd "$(dirname "$0")/.."
target=riscv32imac-unknown-none-elf
export CC_riscv32imac_unknown_none_elf=riscv64-unknown-elf-gcc
export AR_riscv32imac_unknown_none_elf=riscv64-unknown-elf-ar
export CFLAGS_riscv32imac_unknown_none_elf="-ffreestanding -DRING_CORE_NOSTDLIBINC=1 -D__ILP32__=1"
cargo build --release -p onerecord-tls --no-default-features --target "$target"
cargo build --release -p onerecord-tls-embedded --target "$target"
echo "no_std build OK: onerecord-tls and onerecord-tls-embedded for $target"
