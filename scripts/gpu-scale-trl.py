"""TRL's GRPOTrainer for scripts/gpu-scale-check.sh: two generations per
prompt, no vLLM, the model directory, batch and lengths the p3o run had;
prints one JSON line with the per-step seconds and completions/s.

    python3 scripts/gpu-scale-trl.py MODEL_DIR PROMPTS_JSONL COMPLETIONS NEW_TOKENS STEPS DEVICE
"""
import json
import os
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_dir, prompts_path, completions, new_tokens, steps, device = sys.argv[1:7]
completions, new_tokens, steps = int(completions), int(new_tokens), int(steps)
cpu = device == "cpu"
torch.manual_seed(0)
dtype = torch.float32 if cpu else torch.bfloat16
# Random weights saved once, so that TRL loads its reference model from them too.
weights = tempfile.mkdtemp()
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype).save_pretrained(weights)
tok = AutoTokenizer.from_pretrained(model_dir)
tok.save_pretrained(weights)
model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype)
prompts = [json.loads(l)["prompt"] for l in open(prompts_path)]


def vowels(completions, **_):
    return [sum(c in "aeiou" for c in text) / new_tokens for text in completions]


class Clock(TrainerCallback):
    marks = []

    def on_train_begin(self, *a, **k):
        Clock.marks = [time.perf_counter()]

    def on_step_end(self, *a, **k):
        if not cpu:
            torch.cuda.synchronize()
        Clock.marks.append(time.perf_counter())


args = GRPOConfig(
    output_dir=tempfile.mkdtemp(), per_device_train_batch_size=completions, num_generations=2,
    steps_per_generation=1, num_iterations=1, max_completion_length=new_tokens, learning_rate=1e-6,
    beta=0.1, max_steps=steps, logging_steps=steps, report_to=[], use_cpu=cpu, bf16=not cpu,
    save_strategy="no", temperature=1.0, dataloader_num_workers=0, seed=0, disable_tqdm=True,
)
data = Dataset.from_list([{"prompt": p} for p in prompts * (steps * completions // len(prompts) + 2)])
trainer = GRPOTrainer(model=model, reward_funcs=vowels, args=args, train_dataset=data, processing_class=tok,
                      callbacks=[Clock()])
trainer.train()
step_s = [b - a for a, b in zip(Clock.marks, Clock.marks[1:])]
later = sorted(step_s[1:]) or step_s
median = later[len(later) // 2]
peak = 0 if cpu else torch.cuda.max_memory_allocated() / 2**30
print(json.dumps({"step_s": step_s, "completions_per_s": completions / median, "torch_peak_allocated_gib": peak}))
