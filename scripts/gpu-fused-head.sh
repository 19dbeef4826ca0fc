#!/usr/bin/env bash
# The GPU half of the fused LM head's measurements ([C-FUSED-HEAD]):
# forward + backward, and a forward without gradient, of p3o's fused head
# (benches/fused_head.rs, `--side fused`) against the materialised head in
# libtorch (`--side materialised`), the fused head with the token kernels
# (`--side fused-kernels`, GPU only), PyTorch eager, Liger's fused linear
# cross-entropy and cut-cross-entropy (scripts/gpu-fused-head.py), at
#   (a) N = 8192, H = 4096, V = 151936, bf16;
#   (b) Gemma-2-2B's head as CCE's paper measured it: N = 8192, H = 2304,
#       V = 256000, bf16.
# Each side runs in its own process, the p3o sides twice, alternating.
#
#   scripts/gpu-fused-head.sh bundle      # development machine: the bench
#                                         # binary (features cuda, torch) and
#                                         # the wheels of liger-kernel and
#                                         # cut-cross-entropy into
#                                         # gpu-bundle-head/
#   scripts/gpu-fused-head.sh run         # on the GPU machine (about 3 min)
#   DEVICE=cpu scripts/gpu-fused-head.sh run   # tiny shapes on the CPU (a
#                                         # dry run of the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${BUNDLE:-gpu-bundle-head}
device=${DEVICE:-cuda}

case "${1:-}" in
bundle)
    mkdir -p "$bundle/wheels"
    bin=$(source scripts/torch-env.sh && cargo bench --no-run --features cuda,torch --bench fused_head \
        --message-format=json 2>/dev/null \
        | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "fused_head":
        print(m["executable"])' | tail -1)
    cp "$bin" "$bundle/fused_head" && strip "$bundle/fused_head"
    rm -f "$bundle"/wheels/*.whl
    python3 -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: --dest "$bundle/wheels" \
        liger-kernel==0.8.5 cut-cross-entropy==25.1.1
    du -sh "$bundle"
    ;;
run)
    lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if [ "$device" = cpu ]; then
        shapes=("64 16 500" "48 8 1000"); dtype=f32; reps=3; threads=2
        sides="fused materialised materialised fused"
    else
        shapes=("8192 4096 151936" "8192 2304 256000"); dtype=bf16; reps=10; threads=16
        sides="fused fused-kernels materialised materialised fused-kernels fused"
        [ -d "$bundle/wheels" ] && python3 -m pip install --quiet --no-index --no-deps "$bundle"/wheels/*.whl
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    fi
    for shape in "${shapes[@]}"; do
        read -r n h v <<<"$shape"
        for side in $sides; do
            "$bundle/fused_head" --side "$side" --n "$n" --h "$h" --v "$v" --dtype "$dtype" \
                --device "$device" --reps "$reps" --threads "$threads"
        done
        python3 scripts/gpu-fused-head.py --n "$n" --h "$h" --v "$v" --dtype "$dtype" --reps "$reps"
    done
    ;;
*)
    echo "usage: $0 bundle|run" >&2
    exit 2
    ;;
esac
