#!/usr/bin/env bash
# The short GPU training check of `p3o train`: a Pythia-410M-shaped GPT-NeoX
# with random weights (made here with transformers), a few steps of each
# given algorithm on CUDA, samples/s from metrics.jsonl and the peak GPU
# memory (nvidia-smi, sampled every 100 ms).
#   scripts/gpu-train-check.sh BUNDLE_DIR [ALGORITHM ...]
# BUNDLE_DIR holds a release `p3o` built with --features torch and a
# tokenizer.json (the built-in character tokenizer serves: its ids fit the
# vocabulary). The machine needs PyTorch 2.11.0 with CUDA and transformers.
set -euo pipefail
bundle=$1
shift
algorithms=${*:-p3o-v2}
work=${OUT:-/tmp}/p3o-gpu-train
mkdir -p "$work"
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
python3 - "$work/pythia-410m-random" "$bundle/tokenizer.json" <<'PY'
import shutil, sys, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
out, tok = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096, max_position_embeddings=2048, rotary_pct=0.25,
                    use_parallel_residual=True, eos_token_id=0, bos_token_id=0)
with torch.device("cuda"):
    model = GPTNeoXForCausalLM(cfg)
model.save_pretrained(out, safe_serialization=True)
shutil.copy(tok, out + "/tokenizer.json")
print("params:", sum(p.numel() for p in model.parameters()))
PY
for alg in $algorithms; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$work/mem-$alg.txt" &
    smi=$!
    start=$(date +%s.%N)
    LD_LIBRARY_PATH=$torch_lib "$bundle/p3o" train --out "$work/run-$alg" --set algorithm="$alg" \
        --set policy="$work/pythia-410m-random" --set device=cuda --set steps=3 --set batch_size=16 \
        --set minibatch_size=8 --set max_new_tokens=32 --set eval_every=0 --set checkpoint_every=0 --set threads=8 > /dev/null
    end=$(date +%s.%N)
    kill "$smi"
    peak=$(sort -n "$work/mem-$alg.txt" | tail -1)
    sps=$(python3 -c "import json,sys; l=[json.loads(x) for x in open('$work/run-$alg/metrics.jsonl')]; print(round(sum(x['samples_per_s'] for x in l[1:])/max(1,len(l)-1),1))")
    echo "$alg: samples/s (steps 2-3) $sps, peak GPU memory ${peak} MiB, wall $(python3 -c "print(round($end-$start,1))") s"
done
