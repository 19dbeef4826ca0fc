#!/usr/bin/env bash
# Runs every CUDA kernel through its host execution (kernels/host/) under
# ThreadSanitizer: a missing __syncthreads() between a shared-memory write and
# a read by another thread of the block fails this with a data-race report.
# Needs only g++ (C++20) with its ThreadSanitizer runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${CARGO_TARGET_DIR:-target}/kernel-race-check
mkdir -p "$out"
g++ -std=c++20 -O1 -g -fsanitize=thread -fno-strict-aliasing -Wall -Wextra \
    -Wno-unknown-pragmas -Wno-unused-parameter \
    kernels/host/kernels.cpp kernels/host/race_check.cpp -o "$out/race_check"
run=("$out/race_check")
# ThreadSanitizer's fixed memory layout can clash with strong address-space
# randomisation (vm.mmap_rnd_bits = 32 on some kernels); run without it where
# the system allows.
if setarch "$(uname -m)" -R true 2>/dev/null; then
    run=(setarch "$(uname -m)" -R "${run[@]}")
fi
TSAN_OPTIONS="halt_on_error=1 exitcode=66" "${run[@]}"
