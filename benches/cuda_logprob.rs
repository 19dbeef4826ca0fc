//! fwd + bwd of the token log-prob kernels at N = 16384 rows, timed with CUDA
//! events, against a device-to-device copy of the logits in the same run.
//! Bytes moved by fwd + bwd: 3 N V b (two reads and one write of the
//! matrix); by the copy: 2 N V b. Prints a table of GB/s at the end.

use std::sync::Mutex;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use cudarc::driver::CudaSlice;
use p3o::cuda::ops::{Bf16, LogitElement};
use p3o::cuda::{CudaError, Gpu};

const N: usize = 16_384;
const VOCABS: [usize; 3] = [32_000, 50_257, 128_256];

/// (name, bytes per iteration, per-iteration times) of every benchmark.
static TIMES: Mutex<Vec<(String, f64, Vec<f64>)>> = Mutex::new(Vec::new());

/// Times `iters` runs of `f` between two CUDA events on the GPU's stream.
fn timed(gpu: &Gpu, iters: u64, mut f: impl FnMut()) -> Duration {
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = gpu.ctx.new_event(timing).unwrap();
    let end = gpu.ctx.new_event(timing).unwrap();
    start.record(&gpu.stream).unwrap();
    for _ in 0..iters {
        f();
    }
    end.record(&gpu.stream).unwrap();
    end.synchronize().unwrap();
    Duration::from_secs_f64(f64::from(start.elapsed_ms(&end).unwrap()) / 1e3)
}

fn record(name: &str, bytes: f64, iters: u64, d: Duration) {
    let mut t = TIMES.lock().unwrap();
    let per = d.as_secs_f64() / iters as f64;
    match t.iter_mut().find(|(n, _, _)| n == name) {
        Some(entry) => entry.2.push(per),
        None => t.push((name.to_string(), bytes, vec![per])),
    }
}

fn bench_dtype<T: LogitElement>(
    c: &mut Criterion,
    gpu: &Gpu,
    label: &str,
    make: impl Fn(f32) -> T,
) {
    let mut group = c.benchmark_group(format!("token_logprob_{label}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for v in VOCABS {
        let elems = N * v;
        let b = std::mem::size_of::<T>() as f64;
        // A cheap deterministic fill, not zeros: varied logits in [-8, 8].
        let host: Vec<T> = (0..elems)
            .map(|i| make(((i.wrapping_mul(2_654_435_761) % 65_536) as f32 / 4096.0) - 8.0))
            .collect();
        let logits: CudaSlice<T> = gpu.stream.memcpy_stod(&host).unwrap();
        drop(host);
        let targets: CudaSlice<i64> = gpu
            .stream
            .memcpy_stod(
                &(0..N as i64)
                    .map(|i| (i * 7919) % v as i64)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let g: CudaSlice<f32> = gpu.stream.memcpy_stod(&vec![1.0f32; N]).unwrap();
        let mut logp = gpu.stream.alloc_zeros::<f32>(N).unwrap();
        let mut lse = gpu.stream.alloc_zeros::<f32>(2 * N).unwrap();
        let mut grad = gpu.stream.alloc_zeros::<T>(elems).unwrap();

        let kernel_bytes = 3.0 * elems as f64 * b;
        group.throughput(Throughput::Bytes(kernel_bytes as u64));
        let name = format!("{label} V={v} fwd+bwd");
        group.bench_function(BenchmarkId::new("fwd+bwd", v), |bench| {
            bench.iter_custom(|iters| {
                let d = timed(gpu, iters, || {
                    gpu.token_logprob_fwd(&logits, &targets, v, &mut logp, &mut lse)
                        .unwrap();
                    gpu.token_logprob_bwd(&logits, &targets, &lse, &g, v, &mut grad)
                        .unwrap();
                });
                record(&name, kernel_bytes, iters, d);
                d
            })
        });
        let copy_bytes = 2.0 * elems as f64 * b;
        group.throughput(Throughput::Bytes(copy_bytes as u64));
        let name = format!("{label} V={v} copy");
        group.bench_function(BenchmarkId::new("copy", v), |bench| {
            bench.iter_custom(|iters| {
                let d = timed(gpu, iters, || {
                    gpu.stream.memcpy_dtod(&logits, &mut grad).unwrap()
                });
                record(&name, copy_bytes, iters, d);
                d
            })
        });
    }
    group.finish();
}

fn main() {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(CudaError::NoDevice(why)) => {
            println!("skipped: no CUDA device ({why})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut c = Criterion::default().configure_from_args();
    bench_dtype::<f32>(&mut c, &gpu, "f32", |x| x);
    bench_dtype::<Bf16>(&mut c, &gpu, "bf16", Bf16::from_f32);
    c.final_summary();

    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let t = TIMES.lock().unwrap();
    println!(
        "\n{:<26} {:>10} {:>10} {:>8}",
        "kernel (N = 16384)", "ms", "GB/s", "of copy"
    );
    for pair in t.chunks(2) {
        let [(kname, kbytes, ktimes), (_, cbytes, ctimes)] = pair else {
            continue;
        };
        let (km, cm) = (median(ktimes), median(ctimes));
        let (kbw, cbw) = (kbytes / km / 1e9, cbytes / cm / 1e9);
        println!(
            "{:<26} {:>10.3} {:>10.0} {:>7.0}%",
            kname,
            km * 1e3,
            kbw,
            100.0 * kbw / cbw
        );
        println!(
            "{:<26} {:>10.3} {:>10.0}",
            kname.replace("fwd+bwd", "copy"),
            cm * 1e3,
            cbw
        );
    }
}
