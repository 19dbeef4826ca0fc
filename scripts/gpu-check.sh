#!/usr/bin/env bash
# The prepared GPU check of the CUDA kernels, in two steps.
#
#   scripts/gpu-check.sh bundle   # on a development machine (Rust toolchain):
#                                 # builds the CUDA test and bench binaries and
#                                 # copies them, stripped, into gpu-bundle/
#   scripts/gpu-check.sh run      # on a CUDA machine with PyTorch 2.11.0+cu130
#                                 # and CUDA 13 libraries, no Rust, no network:
#                                 # runs every CUDA test, the kernel benchmarks
#                                 # and the PyTorch eager peer, table last.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle

case "${1:-}" in
bundle)
    rm -rf "$bundle" && mkdir -p "$bundle"
    # The executable of the named test or bench target, from cargo's JSON.
    exe() { python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"; }
    cp "$(cargo test --release --features cuda --test cuda_kernels --no-run --message-format=json | exe cuda_kernels)" "$bundle/cuda_kernels"
    cp "$(cargo bench --features cuda --bench cuda_logprob --no-run --message-format=json | exe cuda_logprob)" "$bundle/cuda_logprob"
    # The kernels on libtorch tensors (needs the machine's libtorch at run time).
    # shellcheck source=scripts/torch-env.sh
    (source scripts/torch-env.sh && cp "$(cargo test --release --features cuda,torch --test cuda_torch --no-run --message-format=json | exe cuda_torch)" "$bundle/cuda_torch")
    strip "$bundle"/cuda_kernels "$bundle"/cuda_logprob "$bundle"/cuda_torch
    cp benches/torch_eager_logprob.py "$bundle/"
    # The project's pinned NVRTC, for a machine whose own copy is missing or
    # newer than its driver accepts (used when P3O_BUNDLED_NVRTC=1).
    nvrtc_dir=${P3O_CACHE:-$HOME/.cache/p3o}/nvrtc-13.0.88/nvidia/cu13/lib
    if [ -f "$nvrtc_dir/libnvrtc.so.13" ]; then
        tar cJf "$bundle/nvrtc.tar.xz" -C "$nvrtc_dir" libnvrtc.so.13 libnvrtc-builtins.so.13.0
    fi
    du -sh "$bundle"
    ;;
run)
    out=${OUT:-/tmp/p3o-gpu-check}
    mkdir -p "$out"
    if [ "${P3O_BUNDLED_NVRTC:-0}" = 1 ]; then
        mkdir -p /tmp/p3o-nvrtc && tar xJf "$bundle/nvrtc.tar.xz" -C /tmp/p3o-nvrtc
        export P3O_NVRTC_DIR=/tmp/p3o-nvrtc
    fi
    # NVRTC: otherwise the copy that ships with PyTorch's CUDA 13 libraries.
    if [ -z "${P3O_NVRTC_DIR:-}" ]; then
        P3O_NVRTC_DIR=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "lib"))')
        if [ ! -f "$P3O_NVRTC_DIR/libnvrtc.so.13" ]; then
            P3O_NVRTC_DIR=$(dirname "$(find / -name libnvrtc.so.13 -not -path '/proc/*' 2>/dev/null | head -1)")
        fi
        export P3O_NVRTC_DIR
    fi
    # If the machine's NVRTC cannot build modules this driver loads, fall back
    # to the bundled one.
    if ! "$bundle/cuda_kernels" launch_checks_shapes --exact >"$out/probe.log" 2>&1 && [ -f "$bundle/nvrtc.tar.xz" ]; then
        echo "NVRTC in $P3O_NVRTC_DIR failed the probe; using the bundled NVRTC 13.0.88"
        tail -5 "$out/probe.log"
        mkdir -p /tmp/p3o-nvrtc && tar xJf "$bundle/nvrtc.tar.xz" -C /tmp/p3o-nvrtc
        export P3O_NVRTC_DIR=/tmp/p3o-nvrtc
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
    ls "$P3O_NVRTC_DIR" | grep nvrtc | tee -a "$out/device.txt"
    status=0
    # The host_* tests (the kernels on the CPU) and kernels_assemble_* (ptxas
    # and nvdisasm from scripts/setup-cuda.sh) are for development machines.
    "$bundle/cuda_kernels" --test-threads=1 --skip host_ --skip kernels_assemble 2>&1 | tee "$out/tests.log" || status=1
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    LD_LIBRARY_PATH=$torch_lib "$bundle/cuda_torch" --test-threads=1 --nocapture --skip host_ 2>&1 | tee -a "$out/tests.log" || status=1
    [ "${P3O_SKIP_BENCH:-0}" = 1 ] || "$bundle/cuda_logprob" --bench 2>&1 | tee "$out/bench.log" || status=1
    [ "${P3O_SKIP_BENCH:-0}" = 1 ] || python3 "$bundle/torch_eager_logprob.py" 2>&1 | tee "$out/eager.log" || status=1
    echo
    echo "== summary ($(cat "$out/device.txt" | head -1))"
    grep -E "^test result" "$out/tests.log" || true
    sed -n '/^kernel (N = 16384)/,$p' "$out/bench.log" 2>/dev/null || true
    cat "$out/eager.log" 2>/dev/null || true
    exit $status
    ;;
*)
    echo "usage: $0 bundle|run" >&2
    exit 2
    ;;
esac
