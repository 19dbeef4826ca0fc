"""Peer harness for `p3o train`: TRL's RLOOTrainer with 2 generations per
prompt (the TRL algorithm closest to P3O-V1) against `p3o train
--set algorithm=p3o-v1` on the same HF model directory, prompts, batch of
completions, lengths, reward function and thread count, one after the other
on this machine.

    python3 benches/trl_rloo.py --p3o target/release/p3o [--threads 2] [--steps 5]

The model is a Pythia-14M-shaped GPT-NeoX with random weights and the
built-in character tokenizer of p3o (so both sides decode the same text);
the reward is p3o's built-in one (vowels over max_new_tokens). Each step:
16 prompts x 2 completions of up to 16 tokens, 2 passes over the rollout in
minibatches of 16 completions (8 pairs). Prints completions per second of
the training loop for both and the ratio.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

import torch

PROMPTS = [
    "the cat", "a dog ran", "once upon", "my friend", "in the garden", "we saw", "it was late",
    "the river", "she said", "an old man", "on the hill", "they found", "under a tree", "he wrote",
    "the moon", "at dawn", "our house", "the little", "far away", "by the sea", "a new day",
    "the king", "two birds", "in winter",
]
PROMPTS_PER_STEP, GENERATIONS, NEW_TOKENS, EPOCHS = 16, 2, 16, 2


def make_model(out, tokenizer_json):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=2048, rotary_pct=0.25,
        use_parallel_residual=True, eos_token_id=0, bos_token_id=0, pad_token_id=0,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    shutil.copy(tokenizer_json, os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": "<unk>", "padding_side": "left"}, f)


def vowels(completions, **_):
    return [sum(c in "aeiou" for c in text) / NEW_TOKENS for text in completions]


def run_trl(model_dir, steps, threads, work):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    minibatch = PROMPTS_PER_STEP * GENERATIONS // 2  # 16 completions = 8 pairs
    optimizer_steps = steps * 2 * EPOCHS              # 2 minibatches x epochs per rollout
    args = RLOOConfig(
        output_dir=os.path.join(work, "trl"), per_device_train_batch_size=minibatch,
        num_generations=GENERATIONS, steps_per_generation=2, num_iterations=EPOCHS,
        max_completion_length=NEW_TOKENS, learning_rate=1e-3, beta=0.1, max_steps=optimizer_steps,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", temperature=1.0,
        dataloader_num_workers=0, seed=0,
    )
    data = Dataset.from_list([{"prompt": p} for p in PROMPTS * 8])
    trainer = RLOOTrainer(model=model, reward_funcs=vowels, args=args, train_dataset=data, processing_class=tok)
    start = time.perf_counter()
    trainer.train()
    return steps * PROMPTS_PER_STEP * GENERATIONS / (time.perf_counter() - start)


def run_p3o(binary, model_dir, steps, threads, work):
    prompts = os.path.join(work, "prompts.jsonl")
    with open(prompts, "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p}) + "\n")
    out = os.path.join(work, "p3o")
    sets = {
        "algorithm": "p3o-v1", "policy": model_dir, "reward": "builtin:vowels", "prompts": prompts,
        "eval_prompts": prompts, "steps": steps, "batch_size": PROMPTS_PER_STEP, "minibatch_size": 8,
        "epochs": EPOCHS, "max_new_tokens": NEW_TOKENS, "lr": 1e-3, "beta": 0.1, "threads": threads,
        "eval_every": 0, "checkpoint_every": 0,
    }
    args = [binary, "train", "--out", out] + [f"--set={k}={v}" for k, v in sets.items()]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    lines = [l for l in lines if l.get("split") == "train"]
    loop = sum(PROMPTS_PER_STEP * GENERATIONS / l["samples_per_s"] for l in lines)
    return steps * PROMPTS_PER_STEP * GENERATIONS / loop, steps * PROMPTS_PER_STEP * GENERATIONS / wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p3o", required=True, help="a release p3o built with --features torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="p3o-trl-")
    model_dir = os.path.join(work, "pythia-14m-random")
    tok = os.path.join(work, "tokenizer.json")
    subprocess.run([args.p3o, "train", "--out", os.path.join(work, "tok"), "--set=steps=1", "--set=eval_every=0",
                    "--set=checkpoint_every=0"], check=True, stdout=subprocess.DEVNULL)
    shutil.copy(os.path.join(work, "tok", "final", "tokenizer.json"), tok)
    make_model(model_dir, tok)
    p3o_loop, p3o_wall = run_p3o(args.p3o, model_dir, args.steps, args.threads, work)
    trl = run_trl(model_dir, args.steps, args.threads, work)
    print(f"p3o train p3o-v1: {p3o_loop:.1f} completions/s in its training loop ({p3o_wall:.1f}/s including start-up)")
    print(f"TRL RLOOTrainer:  {trl:.1f} completions/s in trainer.train()")
    print(f"ratio (training loops): {p3o_loop / trl:.2f}x")


if __name__ == "__main__":
    main()
