"""Peer harness for benches/generate.rs: HF transformers generate on a
Pythia-14M-shaped GPT-NeoX with random weights, on the CPU.

    python3 benches/hf_generate.py [--out DIR] [--threads 2] [--shape pythia-14m|tiny]

Writes the model (HF layout) and the prompts to DIR (default
target/bench-models/pythia-14m-random), so that `cargo bench --features torch
--bench generate` runs the same model on the same prompts, then prints HF's
tokens/s: greedy, KV cache on, 8 prompts of 32 tokens, 64 new tokens each,
no EOS (every row runs to the end). Median of 5 runs after one warm-up.
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

BATCH, PROMPT, NEW = 8, 32, 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("target", "bench-models", "pythia-14m-random"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", choices=["pythia-14m", "tiny"], default="pythia-14m",
                    help="tiny: hidden 64, 2 layers, vocabulary 512 (interpreter overhead dominates)")
    args = ap.parse_args()
    if args.shape == "tiny" and args.out == ap.get_default("out"):
        args.out = os.path.join("target", "bench-models", "tiny-random")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
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
