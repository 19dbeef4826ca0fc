#!/usr/bin/env bash
# The prepared GPU checks of the CUDA kernels and of `p3o train`.
#
#   scripts/gpu-check.sh bundle   # on a development machine (Rust toolchain):
#                                 # builds the CUDA test and bench binaries and
#                                 # `p3o` (features cuda, torch) and copies
#                                 # them, stripped, into gpu-bundle/
#   scripts/gpu-check.sh run      # on a CUDA machine with PyTorch 2.11.0+cu130
#                                 # and CUDA 13 libraries, no Rust, no network:
#                                 # runs every CUDA test, the kernel benchmarks
#                                 # (with the tch eager peer) and the PyTorch
#                                 # eager peer's memory figures, table last.
#   scripts/gpu-check.sh train    # there too (transformers needed): the
#                                 # built-in task with kernels = cuda against
#                                 # kernels = torch, then the 410M-shaped
#                                 # learning check (scripts/gpu-train-check.sh)
#                                 # in float32, bfloat16 and with kernels = cuda.
#                                 # DEVICE=cpu tries it without a GPU (the
#                                 # kernels then run on the CPU: cuda-host).
#   scripts/gpu-check.sh profile  # there too: Nsight Compute on one launch of
#                                 # each token kernel (PROFILE_CASES picks
#                                 # part/dtype/V, e.g. fwd/bf16/128256).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle
# A GPU test that finds no device fails here instead of reporting a skip.
export P3O_REQUIRE_GPU=1

# Sets P3O_NVRTC_DIR on a CUDA machine, unless the caller did: the bundled
# NVRTC with P3O_BUNDLED_NVRTC=1, else the copy that ships with PyTorch's
# CUDA 13 libraries, else the first libnvrtc.so.13 on the disk.
pick_nvrtc() {
    if [ "${P3O_BUNDLED_NVRTC:-0}" = 1 ]; then
        mkdir -p /tmp/p3o-nvrtc && tar xJf "$bundle/nvrtc.tar.xz" -C /tmp/p3o-nvrtc
        export P3O_NVRTC_DIR=/tmp/p3o-nvrtc
    fi
    if [ -z "${P3O_NVRTC_DIR:-}" ]; then
        P3O_NVRTC_DIR=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "lib"))')
        if [ ! -f "$P3O_NVRTC_DIR/libnvrtc.so.13" ]; then
            P3O_NVRTC_DIR=$(dirname "$(find / -name libnvrtc.so.13 -not -path '/proc/*' 2>/dev/null | head -1)")
        fi
        export P3O_NVRTC_DIR
    fi
}

# The LD_LIBRARY_PATH of the bundled binaries on a CUDA machine: PyTorch's
# libtorch.
run_libs() {
    python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'
}

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
    # The bench (with its tch eager peer) and the kernels on libtorch tensors
    # need the machine's libtorch at run time.
    # shellcheck source=scripts/torch-env.sh
    (source scripts/torch-env.sh && cp "$(cargo bench --features cuda,torch --bench cuda_logprob --no-run --message-format=json | exe cuda_logprob)" "$bundle/cuda_logprob")
    # shellcheck source=scripts/torch-env.sh
    (source scripts/torch-env.sh && cp "$(cargo test --release --features cuda,torch --test cuda_torch --no-run --message-format=json | exe cuda_torch)" "$bundle/cuda_torch")
    # The model stack against the committed HF fixtures, on CUDA.
    (source scripts/torch-env.sh && cp "$(cargo test --release --features torch --test torch_models --no-run --message-format=json | exe torch_models)" "$bundle/torch_models")
    # The CLI for the training checks, and the built-in character tokenizer
    # that scripts/gpu-train-check.sh gives its random models.
    (source scripts/torch-env.sh && cargo build --release --features cuda,torch --bin p3o && cp target/release/p3o "$bundle/p3o")
    tok=$(mktemp -d)
    "$bundle/p3o" train --out "$tok/run" --set steps=1 --set eval_every=0 >/dev/null
    cp "$tok/run/final/tokenizer.json" "$bundle/tokenizer.json" && rm -rf "$tok"
    strip "$bundle"/cuda_kernels "$bundle"/cuda_logprob "$bundle"/cuda_torch "$bundle"/torch_models "$bundle"/p3o
    # A bare CUDA image has no fontconfig or freetype; the charts draw with
    # an embedded font, so no binary may link them.
    if ldd "$bundle"/* 2>/dev/null | grep -E 'fontconfig|freetype'; then
        echo "a bundled binary links a system font library (above)" >&2
        exit 1
    fi
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
    pick_nvrtc
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
    "$bundle/cuda_kernels" --test-threads=1 --nocapture --skip host_ --skip kernels_assemble 2>&1 | tee "$out/tests.log" || status=1
    torch_lib=$(run_libs)
    LD_LIBRARY_PATH=$torch_lib "$bundle/cuda_torch" --test-threads=1 --nocapture --skip host_ 2>&1 | tee -a "$out/tests.log" || status=1
    LD_LIBRARY_PATH=$torch_lib "$bundle/torch_models" --test-threads=1 --nocapture cuda_ 2>&1 | tee -a "$out/tests.log" || status=1
    [ "${P3O_SKIP_BENCH:-0}" = 1 ] || LD_LIBRARY_PATH=$torch_lib "$bundle/cuda_logprob" --bench --noplot 2>&1 | tee "$out/bench.log" || status=1
    [ "${P3O_SKIP_BENCH:-0}" = 1 ] || python3 "$bundle/torch_eager_logprob.py" 2>&1 | tee "$out/eager.log" || status=1
    took=$SECONDS
    # The alignment probe of float32 at V = 50257 (benches/cuda_logprob.rs,
    # `bench_alignment`; about 15 s), only while the 6 minutes allow it.
    if [ "${P3O_SKIP_BENCH:-0}" != 1 ] && [ "$SECONDS" -lt 330 ]; then
        P3O_BENCH=alignment LD_LIBRARY_PATH=$torch_lib "$bundle/cuda_logprob" --bench --noplot 2>&1 | tee "$out/alignment.log" || status=1
    fi
    echo
    echo "== summary ($(head -1 "$out/device.txt"); tests, bench and eager took $took s, with the probe ${SECONDS} s, limit 360 s)"
    grep -E "^test result" "$out/tests.log" || true
    sed -n '/^kernel (N = 16384)/,$p' "$out/bench.log" 2>/dev/null || true
    cat "$out/eager.log" 2>/dev/null || true
    if [ -f "$out/alignment.log" ]; then
        echo "alignment probe (float32):"
        sed -n '/^kernel (N = 16384)/,$p' "$out/alignment.log"
    fi
    exit $status
    ;;
train)
    out=${OUT:-/tmp/p3o-gpu-check}
    mkdir -p "$out"
    device=${DEVICE:-cuda}
    outside=cuda
    [ "$device" = cpu ] && outside=cuda-host
    [ "$device" = cpu ] || pick_nvrtc
    torch_lib=$(run_libs)
    # 1. The built-in task, 5 steps, the same seed: libtorch ops against the
    #    hand-written kernels (P3O-V2: token, sequence-sum and pair kernels;
    #    PPO: token and GAE kernels). beta = 0: with beta > 0, a P3O pair
    #    whose rewards tie takes the sign of its shaped difference from
    #    rounding noise at step 1, and the runs separate (README, "CUDA
    #    kernels").
    for alg in p3o-v2 ppo; do
        for kernels in torch "$outside"; do
            rm -rf "$out/tiny-$alg-$kernels"
            LD_LIBRARY_PATH=$torch_lib "$bundle/p3o" train --out "$out/tiny-$alg-$kernels" --set device="$device" \
                --set algorithm="$alg" --set kernels="$kernels" --set steps=5 --set beta=0 --set eval_every=0 \
                --set checkpoint_every=0 >/dev/null
        done
        python3 - "$alg" "$out/tiny-$alg-torch/metrics.jsonl" "$out/tiny-$alg-$outside/metrics.jsonl" "$outside" <<'PY'
import json, sys
alg, outside = sys.argv[1], sys.argv[4]
rows = [[json.loads(x) for x in open(f) if json.loads(x).get("split") == "train"] for f in sys.argv[2:4]]
print(f"built-in task, {alg}, step 5: kernels = torch | kernels = {outside}")
for key in ["loss", "grad_norm", "kl_mean", "reward_mean", "time_update_s"]:
    a, b = rows[0][-1][key], rows[1][-1][key]
    print(f"  {key}: {a:.6g} | {b:.6g} (relative difference {abs(a - b) / max(abs(a), 1e-12):.2g})")
PY
    done
    # 2. Learning on a Pythia-410M-shaped model: float32 (P3O-V2 and PPO),
    #    bfloat16, and the kernels in the training forward.
    DEVICE=$device scripts/gpu-train-check.sh "$bundle" p3o-v2 ppo
    DEVICE=$device EXTRA="--set dtype=bf16" scripts/gpu-train-check.sh "$bundle" p3o-v2
    DEVICE=$device EXTRA="--set kernels=$outside" scripts/gpu-train-check.sh "$bundle" p3o-v2
    ;;
profile)
    # Nsight Compute on one warm launch of each token kernel named below,
    # inside the bench (its filter picks one benchmark, ncu's -k the
    # kernel). Full reports go to $OUT/ncu-*.txt; the lines that say where
    # the time goes are printed last. About 30 s per kernel.
    out=${OUT:-/tmp/p3o-gpu-check}
    mkdir -p "$out"
    pick_nvrtc
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
    torch_lib=$(run_libs)
    sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats --section InstructionStats"
    for case in ${PROFILE_CASES:-fwd/bf16/32000 fwd/bf16/128256 fwd/f32/128256 bwd/bf16/128256 bwd/f32/128256}; do
        IFS=/ read -r part dtype v <<<"$case"
        name="ncu-$part-$dtype-$v"
        rm -f "/tmp/$name.ncu-rep"
        # shellcheck disable=SC2086
        LD_LIBRARY_PATH=$torch_lib "$ncu" --clock-control none -k "regex:^token_logprob_${part}_${dtype}\$" \
            --launch-skip 4 -c 1 $sections -o "/tmp/$name" "$bundle/cuda_logprob" --bench --noplot \
            "^token_logprob_$dtype/$part/$v\$" >"$out/$name.txt" 2>&1 || echo "ncu failed on $case (see $name.txt)"
        # The report's details page, then every metric it holds.
        if [ -f "/tmp/$name.ncu-rep" ]; then
            { "$ncu" --import "/tmp/$name.ncu-rep" --page details; "$ncu" --import "/tmp/$name.ncu-rep" --page raw; } >>"$out/$name.txt" 2>&1
        fi
    done
    echo
    echo "== Nsight Compute, one launch each (N = 16384)"
    for report in "$out"/ncu-*.txt; do
        echo "-- $(basename "$report" .txt)"
        grep -E "^ +(Duration|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per Thread|Issue Slots Busy|No Eligible|Warp Cycles Per Issued Instruction) " "$report" || tail -5 "$report"
        # The three largest stall reasons, in cycles per issued instruction.
        grep -E "smsp__average_warps_issue_stalled_[a-z_]+_per_issue_active\.ratio" "$report" |
            awk '{ print $NF, $1 }' | sort -u | sort -g -r | head -3 || true
    done
    ;;
*)
    echo "usage: $0 bundle|run|train|profile" >&2
    exit 2
    ;;
esac
