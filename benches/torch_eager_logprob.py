"""Peer harness: PyTorch eager log_softmax + gather + backward, the ATen ops
that tch's eager API calls, at the shapes of benches/cuda_logprob.rs.

Prints median milliseconds over CUDA-event-timed runs, the bytes-based GB/s
(same 3 N V b convention as the kernel bench) and the peak extra memory.
Usage: python3 benches/torch_eager_logprob.py
"""
import torch

N = 16384
VOCABS = (32000, 50257, 128256)


def median_ms(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    print(f"{'eager (N = 16384)':<26} {'ms':>10} {'GB/s':>10} {'extra GiB':>10}")
    for dtype, label in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        for v in VOCABS:
            x = (torch.randn(N, v, device=dev, generator=gen) * 3).to(dtype).requires_grad_(True)
            t = torch.randint(0, v, (N, 1), device=dev, generator=gen)

            def step():
                x.grad = None
                logp = torch.log_softmax(x, dim=-1).gather(1, t).squeeze(1)
                logp.sum().backward()

            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            ms = median_ms(step)
            extra = (torch.cuda.max_memory_allocated() - base) / 2**30
            gbs = 3 * x.numel() * x.element_size() / (ms / 1e3) / 1e9
            print(f"{label + ' V=' + str(v) + ' eager':<26} {ms:>10.3f} {gbs:>10.0f} {extra:>10.2f}")
            del x, t
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
