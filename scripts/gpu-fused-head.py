"""The LM head's log-probs, forward and backward, by the peers of p3o's
fused head ([C-FUSED-HEAD]) at one shape: the materialised path in PyTorch
eager (logits, float32 log-softmax, gather), Liger's
LigerFusedLinearCrossEntropyLoss (reduction "none") and Apple's
cut-cross-entropy (`linear_cross_entropy`, reduction "none").

    python3 scripts/gpu-fused-head.py --n 8192 --h 4096 --v 151936 [--dtype bf16] [--reps 10]

Each side: the median over `--reps` of forward + backward (dL/dhidden and
dL/dweight for an upstream gradient per token), and of a forward without
gradient, timed with CUDA events after a warm-up; and the memory it added
(torch.cuda.max_memory_allocated less the allocated memory before, and the
same for reserved memory). One JSON line per side; a side that cannot run
here (no CUDA, a wheel missing) prints its reason instead.
"""
import argparse
import json
import statistics

import torch


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--v", type=int, default=151936)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--sides", default="eager,liger,cce")
    return p.parse_args()


def eager(h, w, t):
    logits = h @ w.t()
    lp = logits.float().log_softmax(-1)
    return lp.gather(-1, t.unsqueeze(-1)).squeeze(-1)


def liger():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
    return lambda h, w, t: -loss(w, h, t)


def cce():
    from cut_cross_entropy import linear_cross_entropy

    return lambda h, w, t: -linear_cross_entropy(h, w, t, reduction="none")


def measure(name, fn, a, device):
    torch.manual_seed(0)
    kind = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    h = (torch.randn(a.n, a.h, device=device) * 0.5).to(kind).requires_grad_(True)
    w = (torch.randn(a.v, a.h, device=device) / a.h**0.5).to(kind).requires_grad_(True)
    t = torch.randint(0, a.v, (a.n,), device=device)
    g = torch.randn(a.n, device=device)
    cuda = device == "cuda"

    def timed(step):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        import time

        t0 = time.perf_counter()
        step()
        return (time.perf_counter() - t0) * 1e3

    def fwd_bwd():
        h.grad = None
        w.grad = None
        (fn(h, w, t).float() * g).sum().backward()

    def fwd():
        with torch.no_grad():
            fn(h, w, t)

    fwd_bwd()
    fwd()
    if cuda:
        torch.cuda.synchronize()
        h.grad = w.grad = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        alloc0, res0 = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    times = [timed(fwd_bwd) for _ in range(a.reps)]
    fwd_times = [timed(fwd) for _ in range(a.reps)]
    out = {"side": name, "n": a.n, "h": a.h, "v": a.v, "dtype": a.dtype, "device": device,
           "fwd_bwd_ms": statistics.median(times), "fwd_ms": statistics.median(fwd_times)}
    if cuda:
        out["extra_alloc_mib"] = (torch.cuda.max_memory_allocated() - alloc0) / 2**20
        out["extra_reserved_mib"] = (torch.cuda.max_memory_reserved() - res0) / 2**20
    print(json.dumps(out), flush=True)


def main():
    a = args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in a.sides.split(","):
        try:
            fn = {"eager": lambda: eager, "liger": liger, "cce": cce}[name]()
            if name != "eager" and device != "cuda":
                raise RuntimeError("needs CUDA (Triton kernels)")
            measure(name, fn, a, device)
        except Exception as e:  # a side that cannot run here says why
            print(json.dumps({"side": name, "skipped": f"{type(e).__name__}: {e}"}), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
