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
# options to every run (e.g. EXTRA="--set dtype=bf16"). The random models
# are made once per $OUT.
set -euo pipefail
bundle=$1
shift
algorithms=${*:-p3o-v2}
device=${DEVICE:-cuda}
work=${OUT:-/tmp}/p3o-gpu-train
mkdir -p "$work"
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):$(cd "$bundle" && pwd)/lib
[ -f "$work/reward-random/model.safetensors" ] || python3 - "$work" "$bundle/tokenizer.json" "$device" <<'PY'
import shutil, sys, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification
work, tok, device = sys.argv[1], sys.argv[2], sys.argv[3]
shape = dict(vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
             eos_token_id=0, bos_token_id=0, pad_token_id=0)
torch.manual_seed(0)
cfg = GPTNeoXConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, **shape)
with torch.device(device):
    model = GPTNeoXForCausalLM(cfg)
model.save_pretrained(work + "/pythia-410m-random", safe_serialization=True)
shutil.copy(tok, work + "/pythia-410m-random/tokenizer.json")
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
        --set policy="$work/pythia-410m-random" --set reward="$work/reward-random" --set device="$device" \
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
    echo "$alg${EXTRA:+ ($EXTRA)}: $stats, peak GPU memory ${peak:-n/a} MiB, wall $(python3 -c "print(round($end-$start,1))") s"
done
