#!/usr/bin/env bash
# The GPU scale check of `p3o train`: P3O-V2 with 256 prompt + 256 new
# tokens on random-weight Llama shapes made on the machine (`random:`),
# bf16 (float32 master weights; under LoRA a frozen bf16 base), the largest
# batch of a short list that fits, and TRL's GRPOTrainer on (a) for the
# ratio:
#   (a) Llama-3.2-1B shape, full fine-tune;
#   (b) Llama-3.1-8B shape, LoRA r = 16 on every projection, with
#       activation checkpointing;
#   (c) Llama-3.2-3B shape, full fine-tune.
# Each prints completions/s (median over steps 2 and later) and the peak
# GPU memory that nvidia-smi saw (CPU: peak RSS).
#
#   scripts/gpu-scale-check.sh bundle      # development machine: p3o (cuda,
#                                          # torch), the character tokenizer
#                                          # and the wheels TRL needs there
#                                          # (trl, datasets, dill,
#                                          # multiprocess) into gpu-bundle/
#   scripts/gpu-scale-check.sh run         # on the GPU machine; within 8 min
#   DEVICE=cpu scripts/gpu-scale-check.sh run   # the same on the CPU with
#                                          # tiny shapes and lengths (a dry
#                                          # run of the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${BUNDLE:-gpu-bundle}
device=${DEVICE:-cuda}
out=${OUT:-/tmp/p3o-scale}

case "${1:-}" in
bundle)
    mkdir -p "$bundle/wheels"
    (source scripts/torch-env.sh && cargo build --release --features cuda,torch --bin p3o && cp target/release/p3o "$bundle/p3o")
    strip "$bundle/p3o"
    tok=$(mktemp -d)
    "$bundle/p3o" train --out "$tok/run" --set steps=1 --set eval_every=0 >/dev/null
    cp "$tok/run/final/tokenizer.json" "$bundle/tokenizer.json" && rm -rf "$tok"
    # The GPU machine runs Python 3.12.
    rm -f "$bundle"/wheels/*.whl
    python3 -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: --dest "$bundle/wheels" \
        trl==1.16.0 datasets==5.2.0 dill multiprocess
    du -sh "$bundle"
    ;;
run)
    mkdir -p "$out"
    if [ "$device" = cpu ]; then
        lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
        shapes=(tiny tiny tiny); prompt_chars=16; new_tokens=16; steps=3
        batches_a="8 4"; batches_b="8 4"; batches_c="8 4"
        binary=${P3O:-$bundle/p3o}
    else
        lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
        shapes=(llama-1b llama-8b llama-3b); prompt_chars=256; new_tokens=256; steps=3
        batches_a="64 32 16"; batches_b="32 16 8"; batches_c="32 16 8"
        binary=$bundle/p3o
        [ -d "$bundle/wheels" ] && python3 -m pip install --quiet --no-index --no-deps "$bundle"/wheels/*.whl
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
    fi
    tokenizer=${TOKENIZER:-$bundle/tokenizer.json}
    # A Llama-family config.json of a named shape, beside the character
    # tokenizer (its end of text is id 0).
    make_shape() {
        local dir=$out/shape-$1
        mkdir -p "$dir"
        python3 - "$1" "$dir" <<'PY'
import json, sys
name, d = sys.argv[1], sys.argv[2]
h, layers, heads, kv, inter, tie, vocab = {
    "llama-1b": (2048, 16, 32, 8, 8192, True, 128256),
    "llama-3b": (3072, 28, 24, 8, 8192, True, 128256),
    "llama-8b": (4096, 32, 32, 8, 14336, False, 128256),
    "tiny": (64, 2, 4, 2, 128, True, 2000),
}[name]
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "intermediate_size": inter, "vocab_size": vocab, "tie_word_embeddings": tie,
           "head_dim": h // heads, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 4096, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
           "initializer_range": 0.02, "attention_bias": False, "mlp_bias": False},
          open(f"{d}/config.json", "w"), indent=1)
json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>", "unk_token": "<unk>", "padding_side": "left"},
          open(f"{d}/tokenizer_config.json", "w"))
PY
        cp "$tokenizer" "$dir/tokenizer.json"
        echo "$dir"
    }
    prompts=$out/prompts.jsonl
    python3 - "$prompt_chars" >"$prompts" <<'PY'
import json, sys
n = int(sys.argv[1])
words = "the cat sat on a mat while an old dog ran by the river under a tree at dawn ".split()
for i in range(64):
    text = " ".join(words[(i + j) % len(words)] for j in range(n))
    print(json.dumps({"prompt": text[:n]}))
PY
    # Peak memory while a command runs: nvidia-smi's largest memory.used
    # (MiB) on a GPU, the peak RSS (KiB) on the CPU.
    peak_run() {
        local log=$1; shift
        if [ "$device" = cpu ]; then
            /usr/bin/time -f "peak_rss_kib %M" -o "$log.mem" "$@"
        else
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$log.mem" &
            local smi=$!
            local status=0
            "$@" || status=$?
            kill "$smi" 2>/dev/null || true
            return $status
        fi
    }
    peak_of() {
        if [ "$device" = cpu ]; then
            awk '/peak_rss_kib/ { printf "%.2f GB RSS", $2 / 1e6 }' "$1.mem"
        else
            sort -n "$1.mem" | tail -1 | awk '{ printf "%.1f GiB", $1 / 1024 }'
        fi
    }
    rate_of() {
        python3 - "$1" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
rates = [l["samples_per_s"] for l in lines[1:]] or [l["samples_per_s"] for l in lines]
print(f"{statistics.median(rates):.2f}")
PY
    }
    # One case: the largest batch (completions per step) of a list that
    # runs; prints and records its figures.
    summary=$out/summary.txt
    : >"$summary"
    chosen_a=0
    case_run() {
        local label=$1 shape=$2 batches=$3; shift 3
        local dir
        dir=$(make_shape "$shape")
        for b in $batches; do
            local run=$out/$label-b$b
            rm -rf "$run"
            if peak_run "$run" env LD_LIBRARY_PATH="$lib" "$binary" train --out "$run" \
                --set policy="random:$dir" --set device="$device" --set dtype=bf16 --set algorithm=p3o-v2 \
                --set steps=$steps --set batch_size=$((b / 2)) --set minibatch_size=$((b / 2)) --set epochs=1 \
                --set max_new_tokens=$new_tokens --set prompts="$prompts" --set eval_prompts="$prompts" \
                --set eval_every=0 --set checkpoint_every=0 --set lr=1e-6 "$@" >"$run.log" 2>&1; then
                echo "$label ($shape, $*): batch $b completions, $(rate_of "$run/metrics.jsonl") completions/s, peak $(peak_of "$run")" | tee -a "$summary"
                [ "$label" = a ] && chosen_a=$b
                return 0
            fi
            echo "$label ($shape): batch $b did not run: $(grep -m1 -i "error" "$run.log" || tail -1 "$run.log")" | tee -a "$summary"
        done
        echo "$label ($shape): no batch of [$batches] ran" | tee -a "$summary"
    }
    case_run a "${shapes[0]}" "$batches_a"
    case_run b "${shapes[1]}" "$batches_b" --set lora_r=16 --set lora_alpha=32 --set lora_target_modules=all-linear --set gradient_checkpointing=true
    case_run c "${shapes[2]}" "$batches_c"
    if [ "$chosen_a" -gt 0 ]; then
        trl=$out/trl-a
        if peak_run "$trl" python3 scripts/gpu-scale-trl.py "$out/shape-${shapes[0]}" "$prompts" "$chosen_a" "$new_tokens" "$steps" "$device" >"$trl.log" 2>&1; then
            echo "TRL GRPOTrainer on (a), batch $chosen_a: $(tail -1 "$trl.log"), peak $(peak_of "$trl")" | tee -a "$summary"
        else
            echo "TRL GRPOTrainer on (a), batch $chosen_a did not run: $(grep -m1 -iE "error|exception" "$trl.log" || tail -1 "$trl.log")" | tee -a "$summary"
        fi
    fi
    echo "== summary ($device, ${SECONDS} s)"
    cat "$summary"
    ;;
*)
    echo "usage: scripts/gpu-scale-check.sh bundle|run   (DEVICE=cpu for a dry run)" >&2
    exit 2
    ;;
esac
