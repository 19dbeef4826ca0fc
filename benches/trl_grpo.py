"""Peer harness for `p3o train --set algorithm=grpo`: TRL's GRPOTrainer and
p3o on the same HF model directory, prompts, group size, lengths, reward
function and thread count, one rollout (one generation) per step, timed per
step on both sides.

    python3 benches/trl_grpo.py --p3o target/release/p3o [--threads 2] [--steps 8] [--rounds 2]
        [--shapes pythia-14m,small-vocab] [--generations 4] [--prompt-chars N]

Shapes (GPT-NeoX, random weights, seed 0, p3o's character tokenizer so that
both sides decode the same text):
  pythia-14m   hidden 128, 6 layers, 4 heads, MLP 512, vocabulary 50304;
  small-vocab  hidden 256, 6 layers, 4 heads, MLP 1024, vocabulary 2000 (the
               character vocabulary padded with two- and three-letter
               tokens, which decode to their letters).
Each step: 8 prompts x 4 completions of 16 new tokens (`--generations`),
2 passes over the rollout in minibatches of 4 prompts (16 completions),
lr 1e-3, KL coefficient 0.1, clip 0.2, temperature 1; the reward is p3o's
built-in one (vowels in the completion over 16). The prompts are short
phrases (2-13 characters); `--prompt-chars N` makes each one N characters
of running text instead (a prompt much longer than its responses, as in
summarisation).

Per-step time: p3o's from `samples_per_s` of each train line of
`metrics.jsonl` (generation, scoring and the update); TRL's from the wall
clock between the ends of the optimizer steps that close each rollout (the
generation happens inside the first of them). The figure is the median over
steps 3 and later. Each round runs, in an order that alternates between
rounds, p3o, TRL as shipped and TRL with the C-heap setting p3o makes at
start-up (`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`),
each in its own process. Prints completions/s per run and the ratios.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PROMPTS = [
    "the cat", "a dog ran", "once upon", "my friend", "in the garden", "we saw", "it was late",
    "the river", "she said", "an old man", "on the hill", "they found", "under a tree", "he wrote",
    "the moon", "at dawn", "our house", "the little", "far away", "by the sea", "a new day",
    "the king", "two birds", "in winter",
]
PROMPTS_PER_STEP, NEW_TOKENS, EPOCHS, MINIBATCHES = 8, 16, 2, 2
HEAP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
SHAPES = {
    "pythia-14m": dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                       intermediate_size=512),
    "small-vocab": dict(vocab_size=2000, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                        intermediate_size=1024),
}


def long_prompts(chars):
    """Each prompt followed by the next ones, cut to `chars` characters."""
    n = len(PROMPTS)
    return [" ".join(PROMPTS[(i + j) % n] for j in range(n))[:chars] for i in range(n)]


def padded_tokenizer(char_tokenizer, vocab_size, out):
    """p3o's character tokenizer with its vocabulary filled up to
    `vocab_size` by letter pairs and triples: encoding still splits text into
    characters, decoding an added id gives its letters."""
    with open(char_tokenizer) as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    extra = (a + b for a in letters for b in letters)
    extra = list(extra) + [a + b + c for a in letters for b in letters for c in letters]
    for word in extra:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    with open(out, "w") as f:
        json.dump(tok, f)


def make_model(out, char_tokenizer, shape):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        **SHAPES[shape], max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
        eos_token_id=0, bos_token_id=0, pad_token_id=0,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    if cfg.vocab_size > 97:
        padded_tokenizer(char_tokenizer, cfg.vocab_size, os.path.join(out, "tokenizer.json"))
    else:
        shutil.copy(char_tokenizer, os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": "<unk>", "padding_side": "left"}, f)


def vowels(completions, **_):
    return [sum(c in "aeiou" for c in text) / NEW_TOKENS for text in completions]


def trl_worker(model_dir, steps, threads, generations, work, prompts):
    """Runs GRPOTrainer in this process; prints one JSON line of per-step seconds."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    per_step = PROMPTS_PER_STEP * generations
    opt_per_rollout = MINIBATCHES * EPOCHS
    args = GRPOConfig(
        output_dir=os.path.join(work, "trl"), per_device_train_batch_size=per_step // MINIBATCHES,
        num_generations=generations, steps_per_generation=MINIBATCHES, num_iterations=EPOCHS,
        max_completion_length=NEW_TOKENS, learning_rate=1e-3, beta=0.1, epsilon=0.2,
        max_steps=steps * opt_per_rollout, logging_steps=steps * opt_per_rollout, report_to=[],
        use_cpu=True, save_strategy="no", temperature=1.0, dataloader_num_workers=0, seed=0,
        loss_type="grpo", scale_rewards="group", disable_tqdm=True,
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *a, **k):
            self.marks = [time.perf_counter()]

        def on_step_end(self, a, state, *rest, **k):
            if state.global_step % opt_per_rollout == 0:
                self.marks.append(time.perf_counter())

    clock = Clock()
    data = Dataset.from_list([{"prompt": p} for p in prompts * 16])
    trainer = GRPOTrainer(model=model, reward_funcs=vowels, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[clock])
    trainer.train()
    step_s = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    print(json.dumps({"step_s": step_s, "completions_per_step": per_step}))


def run_trl(script, model_dir, steps, threads, generations, work, heap, prompt_chars):
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if heap:
        env["GLIBC_TUNABLES"] = HEAP
    out = subprocess.run(
        [sys.executable, script, "--trl-worker", model_dir, "--steps", str(steps), "--threads", str(threads),
         "--generations", str(generations), "--work", work, "--prompt-chars", str(prompt_chars)],
        check=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["step_s"]


def run_p3o(binary, model_dir, steps, threads, generations, work, texts):
    prompts = os.path.join(work, "prompts.jsonl")
    with open(prompts, "w") as f:
        for p in texts:
            f.write(json.dumps({"prompt": p}) + "\n")
    out = os.path.join(work, "p3o")
    shutil.rmtree(out, ignore_errors=True)
    sets = {
        "algorithm": "grpo", "policy": model_dir, "reward": "builtin:vowels", "prompts": prompts,
        "eval_prompts": prompts, "steps": steps, "batch_size": PROMPTS_PER_STEP,
        "responses_per_prompt": generations, "minibatch_size": PROMPTS_PER_STEP // MINIBATCHES,
        "epochs": EPOCHS, "max_new_tokens": NEW_TOKENS, "lr": 1e-3, "beta": 0.1, "epsilon": 0.2,
        "threads": threads, "eval_every": 0, "checkpoint_every": 0,
    }
    args = [binary, "train", "--out", out] + [f"--set={k}={v}" for k, v in sets.items()]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    n = PROMPTS_PER_STEP * generations
    return [n / l["samples_per_s"] for l in lines if l.get("split") == "train"]


def rate(step_s, completions):
    """Completions per second from the median step time over steps 3 and later."""
    return completions / statistics.median(step_s[2:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p3o", help="a release p3o built with --features torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--shapes", default="pythia-14m,small-vocab")
    ap.add_argument("--prompt-chars", type=int, default=0, help="0: the short phrases")
    ap.add_argument("--trl-worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    texts = long_prompts(args.prompt_chars) if args.prompt_chars > 0 else PROMPTS
    if args.trl_worker:
        return trl_worker(args.trl_worker, args.steps, args.threads, args.generations, args.work, texts)
    if not args.p3o:
        ap.error("--p3o is required")
    if args.steps < 3:
        ap.error("--steps must be at least 3 (the median is over steps 3 and later)")
    work = tempfile.mkdtemp(prefix="p3o-trl-grpo-")
    char_tok = os.path.join(work, "tokenizer.json")
    subprocess.run([args.p3o, "train", "--out", os.path.join(work, "tok"), "--set=steps=1", "--set=eval_every=0",
                    "--set=checkpoint_every=0"], check=True, stdout=subprocess.DEVNULL)
    shutil.copy(os.path.join(work, "tok", "final", "tokenizer.json"), char_tok)
    n = PROMPTS_PER_STEP * args.generations
    script = os.path.abspath(__file__)
    for shape in args.shapes.split(","):
        model_dir = os.path.join(work, shape)
        make_model(model_dir, char_tok, shape)
        sides = {
            "p3o": lambda: run_p3o(args.p3o, model_dir, args.steps, args.threads, args.generations, work, texts),
            "trl-shipped": lambda: run_trl(script, model_dir, args.steps, args.threads, args.generations, work,
                                           False, args.prompt_chars),
            "trl-heap": lambda: run_trl(script, model_dir, args.steps, args.threads, args.generations, work,
                                        True, args.prompt_chars),
        }
        rates = {k: [] for k in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                steps = sides[side]()
                rates[side].append(rate(steps, n))
                print(f"{shape} round {r + 1} {side}: {rates[side][-1]:.1f} completions/s "
                      f"(step s: {', '.join(f'{s:.3f}' for s in steps)})", flush=True)
        p3o = statistics.median(rates["p3o"])
        for side in ("trl-shipped", "trl-heap"):
            trl = statistics.median(rates[side])
            print(f"{shape}: p3o {p3o:.1f} vs {side} {trl:.1f} completions/s: {p3o / trl:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
