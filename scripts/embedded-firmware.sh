#!/usr/bin/env bash
# Builds the bare-metal firmware example of io-embedded and runs it under QEMU, on two
# targets: RISC-V RV32IMAC (io-embedded/firmware, QEMU virt) and Cortex-M4F
# (io-embedded/firmware-arm, QEMU mps2-an386; ring 0.17.14 needs the build fix of ring issue
# #813, applied here to the crates.io source). The firmware runs an mTLS client and server of
# onerecord-tls-embedded in one image (TLS 1.3 full and resumed, TLS 1.2, the embedded-io
# stream) and prints heap/stack/instruction measurements. Exits non-zero when anything fails
# (QEMU's exit status comes from the firmware: the virt test device, semihosting on Arm).
# Installs what it needs (idempotent): the Rust targets, Debian's cross GCCs (ring's C code)
# and QEMU. `ONLY=riscv` or `ONLY=arm` runs one target.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
only="${ONLY:-all}"

rustup target add riscv32imac-unknown-none-elf thumbv7em-none-eabihf >/dev/null
need=()
command -v qemu-system-riscv32 >/dev/null || need+=(qemu-system-misc)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v riscv64-unknown-elf-gcc >/dev/null || need+=(gcc-riscv64-unknown-elf)
command -v riscv64-unknown-elf-size >/dev/null || need+=(binutils-riscv64-unknown-elf)
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
command -v arm-none-eabi-size >/dev/null || need+=(binutils-arm-none-eabi)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# run NAME DIR TARGET SIZE-TOOL QEMU-COMMAND...
run() {
    local name="$1" dir="$2" target="$3" size="$4"
    shift 4
    echo "== $name: build ($dir)"
    # The CC/AR/CFLAGS for ring come from the project's .cargo/config.toml.
    (cd "$dir" && cargo build --release)
    local target_dir="${CARGO_TARGET_DIR:-$dir/target}"
    case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
    local out="$target_dir/$target/release"
    echo "== $name: size (flash = text + rodata + data; static RAM = data + bss)"
    "$size" -A "$out/onerecord-tls-firmware" | grep -E '^\.(vector_table|text|rodata|data|bss|stack) '
    # size-client / size-server: one role alone (size probes, not run).
    "$size" -B "$out/onerecord-tls-firmware" "$out/size-client" "$out/size-server"
    echo "== $name: run: $* $out/onerecord-tls-firmware"
    local log status
    log="$(mktemp)"
    set +e
    timeout 120 "$@" "$out/onerecord-tls-firmware" </dev/null | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ] || ! grep -q '^PASS' "$log"; then
        rm -f "$log"
        echo "$name firmware FAILED under QEMU (exit status $status)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$name firmware OK under QEMU"
}

if [ "$only" != arm ]; then
    run riscv32imac io-embedded/firmware riscv32imac-unknown-none-elf riscv64-unknown-elf-size \
        qemu-system-riscv32 -machine virt -bios none -nographic -monitor none -serial stdio \
        -icount shift=0 -kernel
fi

if [ "$only" != riscv ]; then
    # ring 0.17.14 from cargo's download cache, patched (ring issue #813) into
    # io-embedded/firmware-arm/ring-patched, which that project's [patch.crates-io] names.
    arm=io-embedded/firmware-arm
    patch_file="$arm/ring-0.17.14-issue-813.patch"
    crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/ring-0.17.14.crate 2>/dev/null | head -n1 || true)"
    if [ -z "$crate" ]; then
        (cd io-embedded/firmware && cargo fetch)
        crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/ring-0.17.14.crate | head -n1)"
    fi
    stamp="$(sha256sum "$crate" "$patch_file" | sha256sum | cut -c1-16)"
    if [ "$(cat "$arm/ring-patched/.patched" 2>/dev/null || true)" != "$stamp" ]; then
        rm -rf "$arm/ring-patched"
        mkdir -p "$arm/ring-patched"
        tar xzf "$crate" -C "$arm/ring-patched" --strip-components=1
        (cd "$arm/ring-patched" && patch -p1 --quiet < "$root/$patch_file")
        echo "$stamp" > "$arm/ring-patched/.patched"
    fi
    run thumbv7em "$arm" thumbv7em-none-eabihf arm-none-eabi-size \
        qemu-system-arm -machine mps2-an386 -nographic -monitor none -serial stdio \
        -semihosting -icount shift=0 -kernel
fi
