//! The fused LM head ([C-FUSED-HEAD]) against the materialised head, one
//! side per process: forward and backward (`logp` and the gradients of the
//! hidden states and the head's weight) and a forward without gradient,
//! at one shape. Prints one JSON line: the median times over the
//! repetitions and the memory the side added above its inputs (on the CPU
//! the peak resident set, `VmHWM`, less the resident set before; on a GPU
//! the device memory in use, which libtorch's caching allocator keeps at
//! its peak, less the memory in use before).
//!
//! `--side fused-kernels` (feature `cuda`, a GPU) runs the fused head with
//! the token kernels (`kernels = cuda`) instead of libtorch ops.
//!
//! `cargo bench --features torch --bench fused_head -- --side fused --n 2048
//! --h 128 --v 50304 [--dtype f32|bf16] [--device cpu|cuda] [--reps 5]
//! [--chunk ROWS] [--threads 2]`

use std::time::Instant;

use p3o::ops::fused_head::torch::TorchMath;
use p3o::ops::fused_head::{self, ChunkMath, HeadTensors};
use tch::{Device, Kind, Tensor};

struct Args {
    side: String,
    n: i64,
    h: i64,
    v: i64,
    kind: Kind,
    device: Device,
    reps: usize,
    chunk: i64,
    threads: i32,
}

fn parse() -> Args {
    let mut a = Args {
        side: "fused".into(),
        n: 2048,
        h: 128,
        v: 50304,
        kind: Kind::Float,
        device: Device::Cpu,
        reps: 5,
        chunk: 0,
        threads: 2,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        let int = || value().parse::<i64>().expect("an integer");
        match argv[i].as_str() {
            "--side" => a.side = value(),
            "--n" => a.n = int(),
            "--h" => a.h = int(),
            "--v" => a.v = int(),
            "--dtype" => {
                a.kind = match value().as_str() {
                    "bf16" => Kind::BFloat16,
                    _ => Kind::Float,
                }
            }
            "--device" => {
                a.device = if value() == "cuda" {
                    Device::Cuda(0)
                } else {
                    Device::Cpu
                }
            }
            "--reps" => a.reps = int() as usize,
            "--chunk" => a.chunk = int(),
            "--threads" => a.threads = int() as i32,
            // cargo bench passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(
        a.side == "fused" || a.side == "materialised",
        "--side fused|materialised"
    );
    a
}

/// Memory in use now: the resident set on the CPU, the device's used
/// memory on a GPU (bytes).
fn in_use(device: Device) -> (u64, u64) {
    match device {
        Device::Cpu => (status_kib("VmRSS:") * 1024, status_kib("VmHWM:") * 1024),
        _ => {
            let used = gpu_used();
            (used, used)
        }
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[cfg(feature = "cuda")]
fn gpu_used() -> u64 {
    let ctx = cudarc::driver::CudaContext::new(0).expect("a CUDA device");
    ctx.bind_to_thread().expect("the device's primary context");
    let (free, total) = cudarc::driver::result::mem_get_info().expect("cuMemGetInfo");
    (total - free) as u64
}

#[cfg(not(feature = "cuda"))]
fn gpu_used() -> u64 {
    0
}

/// The fused side's chunk math: libtorch ops, or (`fused-kernels`,
/// feature `cuda`) the token kernels on GPU 0.
fn math_of(side: &str) -> Box<dyn ChunkMath> {
    #[cfg(feature = "cuda")]
    if side == "fused-kernels" {
        let gpu = p3o::cuda::Gpu::new(0).expect("a CUDA device for the kernels");
        return Box::new(p3o::ops::fused_head::cuda::KernelMath(std::sync::Arc::new(
            gpu,
        )));
    }
    let _ = side;
    Box::new(TorchMath)
}

fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn main() {
    if std::env::var_os("P3O_BENCH_GLIBC_DEFAULT").is_none() {
        p3o::torch::memory::keep_freed_memory();
    }
    let a = parse();
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let opts = (a.kind, a.device);
    let hidden = (Tensor::randn([a.n, a.h], opts) * 0.5).set_requires_grad(true);
    let weight =
        (Tensor::randn([a.v, a.h], opts) * (1.0 / (a.h as f64).sqrt())).set_requires_grad(true);
    let targets = Tensor::randint(a.v, [a.n], (Kind::Int64, a.device));
    let g = Tensor::randn([a.n], (Kind::Float, a.device));
    let chunk = if a.chunk > 0 {
        a.chunk
    } else {
        fused_head::default_chunk(a.v)
    };
    sync(a.device);
    if let Device::Cpu = a.device {
        // Reset the peak resident set to the present one.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    let (before, _) = in_use(a.device);
    let mut peak = before;
    let mut see = |device| {
        let (now, hwm) = in_use(device);
        peak = peak.max(now).max(hwm);
    };
    let (hd, wd) = (hidden.detach(), weight.detach());
    let x = HeadTensors {
        hidden: &hd,
        weight: &wd,
        bias: None,
        targets: &targets,
        temperature: 1.0,
        chunk,
    };
    let math = math_of(&a.side);
    let (mut fwd_bwd, mut fwd) = (vec![], vec![]);
    for rep in 0..=a.reps {
        sync(a.device);
        let t0 = Instant::now();
        if a.side == "materialised" {
            let logits = hidden.linear::<Tensor>(&weight, None);
            let lp = p3o::torch::logprobs::token_logprobs(&logits, &targets);
            (lp * &g).sum(Kind::Float).backward();
        } else {
            // The training pass, which reports the entropy.
            let out = fused_head::forward(&x, &*math, true).unwrap();
            let grads = fused_head::backward(&x, &*math, &out, &g, None, true).unwrap();
            drop(grads);
        }
        sync(a.device);
        let t1 = Instant::now();
        see(a.device);
        tch::no_grad(|| {
            if a.side == "materialised" {
                let logits = hidden.linear::<Tensor>(&weight, None);
                let _ = p3o::torch::logprobs::token_logprobs(&logits, &targets);
            } else {
                let _ = fused_head::forward(&x, &*math, false).unwrap();
            }
        });
        sync(a.device);
        let t2 = Instant::now();
        see(a.device);
        hidden.grad().f_zero_().ok();
        weight.grad().f_zero_().ok();
        // The first repetition warms up.
        if rep > 0 {
            fwd_bwd.push(t1.duration_since(t0).as_secs_f64() * 1e3);
            fwd.push(t2.duration_since(t1).as_secs_f64() * 1e3);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "side": a.side, "n": a.n, "h": a.h, "v": a.v,
            "dtype": if a.kind == Kind::BFloat16 { "bf16" } else { "f32" },
            "device": format!("{:?}", a.device), "chunk": chunk, "threads": a.threads,
            "fwd_bwd_ms": median(fwd_bwd), "fwd_ms": median(fwd),
            "extra_mib": (peak.saturating_sub(before)) as f64 / (1 << 20) as f64,
        })
    );
}
