#!/usr/bin/env bash
# One P3O-V2 step of a Pythia-14M-shaped policy on the CPU, with the fused
# LM head (fused_head = true) and with the materialised head (false), the
# two sides alternating, each run its own process: peak resident memory of
# the whole process and the step's time (from samples_per_s).
#
#   benches/fused_head_step.sh [P3O_BINARY] [ROUNDS] [EXTRA --set ARGS...]
#
# Pythia-14M's shape: GPT-NeoX, hidden 128, 6 layers, 4 heads, MLP 512,
# vocabulary 50304, untied head; random weights from the seed (random:).
# 16 prompts x 2 responses of 128 new tokens, one pass in minibatches of 8
# pairs, 2 threads.
set -euo pipefail
p3o=${1:-target/release/p3o}
rounds=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/pythia-14m.json" <<'JSON'
{"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
 "vocab_size": 50304, "hidden_size": 128, "num_hidden_layers": 6,
 "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": 2048,
 "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
 "use_parallel_residual": true, "hidden_act": "gelu", "tie_word_embeddings": false,
 "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float32", "initializer_range": 0.02}
JSON
echo "round fused_head peak_rss_gb step_s update_s"
for round in $(seq 1 "$rounds"); do
    if (( round % 2 )); then order="true false"; else order="false true"; fi
    for fused in $order; do
        out="$dir/run-$round-$fused"
        /usr/bin/time -f "%M" -o "$dir/mem" "$p3o" train --out "$out" \
            --set=algorithm=p3o-v2 --set="policy=random:$dir/pythia-14m.json" \
            --set=steps=1 --set=batch_size=16 --set=minibatch_size=8 --set=epochs=1 \
            --set=max_new_tokens=128 --set=eval_every=0 --set=checkpoint_every=0 \
            --set=threads=2 --set=fused_head=$fused "$@" > "$dir/log" 2>&1 \
            || { cat "$dir/log" >&2; exit 1; }
        rss=$(tail -1 "$dir/mem")
        grep '"split":"train"' "$out/metrics.jsonl" | head -1 | python3 -c "
import json, sys
d = json.loads(sys.stdin.read())
print($round, '$fused', round($rss / 1e6, 3), round(32 / d['samples_per_s'], 2), round(d['time_update_s'], 2))"
    done
done
