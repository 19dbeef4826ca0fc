"""Peer harness for benches/generate.rs: HF transformers generate on a
random-weight model of a real model's shape, on the CPU.

    python3 benches/hf_generate.py [--out DIR] [--threads 2] [--shape pythia-14m|tiny|smollm-135m]

Shapes:
    pythia-14m   GPT-NeoX shaped like EleutherAI/pythia-14m (the default)
    tiny         GPT-NeoX, hidden 64, 2 layers, vocabulary 512 (interpreter
                 overhead dominates)
    smollm-135m  Llama shaped like HuggingFaceTB/SmolLM-135M: hidden 576,
                 30 layers, 9 query / 3 KV heads, intermediate 1536,
                 vocabulary 49152, tied embeddings, rope theta 10000

Writes the model (HF layout) and the prompts to DIR (default
target/bench-models/<shape>-random, so pythia-14m-random, tiny-random or
smollm-135m-random), so that `cargo bench --features torch --bench generate`
runs the same model on the same prompts (P3O_BENCH_MODEL=DIR for a shape other
than pythia-14m), then prints HF's tokens/s: greedy, KV cache on, 8 prompts of
32 tokens, 64 new tokens each, no EOS (every row runs to the end). Median of 5
runs after one warm-up.
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

BATCH, PROMPT, NEW = 8, 32, 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="default target/bench-models/<shape>-random")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", choices=["pythia-14m", "tiny", "smollm-135m"], default="pythia-14m",
                    help="tiny: hidden 64, 2 layers, vocabulary 512 (interpreter overhead dominates); "
                         "smollm-135m: a Llama of SmolLM-135M's shape")
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join("target", "bench-models", f"{args.shape}-random")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.shape == "smollm-135m":
        # The shape of HuggingFaceTB/SmolLM-135M (head dim 576 / 9 = 64).
        cfg = LlamaConfig(
            vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=2048,
            rms_norm_eps=1e-5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            eos_token_id=None, bos_token_id=None,
        )
        model = LlamaForCausalLM(cfg).eval()
    else:
        # The shape of EleutherAI/pythia-14m, or a tiny one.
        shape = dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512)
        if args.shape == "tiny":
            shape = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
        cfg = GPTNeoXConfig(
            max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
            eos_token_id=None, bos_token_id=None, **shape,
        )
        model = GPTNeoXForCausalLM(cfg).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    prompts = torch.randint(0, cfg.vocab_size, (BATCH, PROMPT))
    with open(os.path.join(args.out, "bench_prompts.json"), "w") as f:
        json.dump({"prompt_ids": prompts.tolist(), "max_new_tokens": NEW}, f)

    def run():
        with torch.no_grad():
            out = model.generate(
                prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW,
                min_new_tokens=NEW, do_sample=False, pad_token_id=0, use_cache=True,
            )
        assert out.shape == (BATCH, PROMPT + NEW)

    run()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    print(f"hf generate: {BATCH * NEW / t:.0f} tokens/s ({t * 1e3:.1f} ms per batch of {BATCH}x{NEW}, {args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
