#!/usr/bin/env bash
# The short GPU training check of `p3o train`: a Pythia-410M-shaped GPT-NeoX
# with random weights (made here with transformers), a few steps of each
# given algorithm on CUDA, samples/s from metrics.jsonl and the peak GPU
# memory (nvidia-smi, sampled every 100 ms).
#   scripts/gpu-train-check.sh BUNDLE_DIR [ALGORITHM ...]
# BUNDLE_DIR holds a release `p3o` built with --features torch and a
# tokenizer.json (the built-in character tokenizer serves: its ids fit the
# vocabulary). The machine needs PyTorch 2.11.0 with CUDA and transformers.
# The reward is a small random GPT-NeoX reward model over the same 50304 ids
# (a text reward such as builtin:vowels would be 0 for almost every sample of
# a random 50k-token policy, and so would every gradient); each line printed
# also gives the reward spread and the mean gradient norm, so a run whose
# updates are all zero shows. DEVICE=cpu runs the same steps on the CPU
# (no memory figure) to try the script without a GPU; EXTRA adds `--set`
# options to every run (e.g. EXTRA="--set dtype=bf16"); SHAPE=70m makes the
# policy Pythia-70M-shaped instead (a size the CPU runs in seconds). Each
# line also gives how far the weights moved (|w - w0| / |w0| and the share
# of weights that changed), so a run whose updates are rounded away shows.
# The random models are made once per $OUT and shape.
set -euo pipefail
# As in scripts/gpu-check.sh: on a GPU machine nothing may skip for want of
# a device.
export P3O_REQUIRE_GPU=1
bundle=$1
shift
algorithms=${*:-p3o-v2}
device=${DEVICE:-cuda}
shape=${SHAPE:-410m}
case $shape in
    410m) dims='{"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}' ;;
    70m) dims='{"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048}' ;;
    *) echo "SHAPE must be 410m or 70m, not $shape" >&2; exit 2 ;;
esac
work=${OUT:-/tmp}/p3o-gpu-train-$shape
policy=$work/pythia-$shape-random
mkdir -p "$work"
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
[ -f "$work/reward-random/model.safetensors" ] || python3 - "$work" "$policy" "$bundle/tokenizer.json" "$device" "$dims" <<'PY'
import json, shutil, sys, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification
work, policy, tok, device, dims = sys.argv[1:6]
shape = dict(vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
             eos_token_id=0, bos_token_id=0, pad_token_id=0)
torch.manual_seed(0)
cfg = GPTNeoXConfig(**json.loads(dims), **shape)
with torch.device(device):
    model = GPTNeoXForCausalLM(cfg)
model.save_pretrained(policy, safe_serialization=True)
shutil.copy(tok, policy + "/tokenizer.json")
print("policy params:", sum(p.numel() for p in model.parameters()))
rm_cfg = GPTNeoXConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                       num_labels=1, **shape)
rm = GPTNeoXForSequenceClassification(rm_cfg)
torch.nn.init.normal_(rm.score.weight, std=0.1)
rm.save_pretrained(work + "/reward-random", safe_serialization=True)
shutil.copy(tok, work + "/reward-random/tokenizer.json")
PY
for alg in $algorithms; do
    : > "$work/mem-$alg.txt"
    if [ "$device" != cpu ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$work/mem-$alg.txt" &
        smi=$!
    fi
    rm -rf "$work/run-$alg"
    start=$(date +%s.%N)
    LD_LIBRARY_PATH=$torch_lib "$bundle/p3o" train --out "$work/run-$alg" --set algorithm="$alg" \
        --set policy="$policy" --set reward="$work/reward-random" --set device="$device" \
        --set steps=3 --set batch_size=16 --set minibatch_size=8 --set max_new_tokens=32 --set lr=1e-5 --set eval_every=0 \
        --set checkpoint_every=0 --set threads=8 ${EXTRA:-} > /dev/null
    end=$(date +%s.%N)
    [ "$device" != cpu ] && kill "$smi"
    peak=$(sort -n "$work/mem-$alg.txt" | tail -1)
    stats=$(python3 -c "
import json
l = [json.loads(x) for x in open('$work/run-$alg/metrics.jsonl') if json.loads(x).get('split') == 'train']
later = l[1:] or l
mean = lambda k, rows: sum(x[k] for x in rows) / len(rows)
print(f\"samples/s (steps 2-3) {mean('samples_per_s', later):.1f}, reward std {mean('reward_std', l):.3f}, grad norm {mean('grad_norm', l):.3g}, ratio mean {mean('ratio_mean', l):.3g}\")")
    moved=$(python3 - "$policy/model.safetensors" "$work/run-$alg/final/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file
start, end = load_file(sys.argv[1]), load_file(sys.argv[2])
step = norm = 0.0
changed = total = 0
for name, w in end.items():
    if name not in start:
        continue
    w0 = start[name].to(w.dtype).double()  # the start as the run held it
    step += (w.double() - w0).pow(2).sum().item()
    norm += w0.pow(2).sum().item()
    changed += (w.double() != w0).sum().item()
    total += w.numel()
print(f"weights moved {(step / norm) ** 0.5:.3g} (relative), {100 * changed / total:.1f} % of them changed")
PY
)
    echo "$alg${EXTRA:+ ($EXTRA)}: $stats, $moved, peak GPU memory ${peak:-n/a} MiB, wall $(python3 -c "print(round($end-$start,1))") s"
done
