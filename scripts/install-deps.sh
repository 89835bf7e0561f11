#!/usr/bin/env bash
# Installs what the build and the tests need beyond the Rust toolchain: rustfmt and clippy,
# the bare-metal Rust target for the no_std build, a C cross-compiler for ring's C code on that
# target, and the real TLS peers the tests talk to (openssl, curl, gnutls-cli, a JDK for Java's
# JSSE and the Java HTTP application behind the front door, python3 for the Python upstream). Idempotent.
set -euo pipefail

rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add riscv32imac-unknown-none-elf >/dev/null

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v gnutls-cli >/dev/null || need+=(gnutls-bin)
command -v javac >/dev/null || need+=(default-jdk-headless)
# The HTTP front door's tests run a Python HTTP upstream.
command -v python3 >/dev/null || need+=(python3)
command -v riscv64-unknown-elf-gcc >/dev/null || need+=(gcc-riscv64-unknown-elf)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
