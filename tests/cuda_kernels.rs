//! The CUDA kernels: NVRTC compile checks (no GPU needed) and differential
//! tests against the float64 reference (skipped, saying so, without a
//! device). Outputs are poisoned with NaN before every launch and checked
//! fully written.
#![cfg(feature = "cuda")]

use cudarc::driver::CudaSlice;
use p3o::cuda::nvrtc::{KERNEL_FILES, compile};
use p3o::cuda::ops::{Bf16, LogitElement, PairInputs, PairOutputs};
use p3o::cuda::{CudaError, Gpu};
use p3o::reference::gae::gae;
use p3o::reference::tokens::{masked_sum, token_logprob, token_logprob_grad};
use p3o::reference::{Algorithm, Hyper, PairConsts, PairVars, pair_loss};
use p3o::tolerance::{BF16_VS_F64, F32_VS_F64};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn compile_all(arch: &str) {
    for (file, _) in KERNEL_FILES {
        match compile(file, arch) {
            Ok(ptx) => assert!(ptx.contains(".entry"), "{file}: no kernel entry in the PTX"),
            Err(e) => panic!("{e}"),
        }
    }
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-GAE
#[test]
fn kernels_compile_sm80() {
    compile_all("compute_80");
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-GAE C-P3O-V1 C-P3O-V2 C-DPO
#[test]
fn kernels_compile_sm90() {
    compile_all("compute_90");
}

/// The compile check has teeth: a warning (an unused variable) fails it.
// spec: C-TOKEN-LOGPROB
#[test]
fn kernels_compile_rejects_warnings() {
    let src = "extern \"C\" __global__ void k(float* p) { int unused = 3; p[0] = 1.0f; }";
    match p3o::cuda::nvrtc::compile_source("warning.cu", src, "compute_90") {
        Err(CudaError::Compile { log, .. }) => assert!(log.contains("warning"), "{log}"),
        other => panic!("expected a compile error, got {:?}", other.map(|p| p.len())),
    }
}

/// The device, or `None` after printing why the test is skipped.
fn gpu() -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(CudaError::NoDevice(why)) => {
            println!("skipped: no CUDA device ({why})");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn poisoned<T: cudarc::driver::DeviceRepr + Copy>(gpu: &Gpu, n: usize, nan: T) -> CudaSlice<T> {
    gpu.stream.memcpy_stod(&vec![nan; n]).unwrap()
}

fn upload<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, v: &[T]) -> CudaSlice<T> {
    gpu.stream.memcpy_stod(v).unwrap()
}

fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
    gpu: &Gpu,
    s: &CudaSlice<T>,
) -> Vec<T> {
    gpu.stream.memcpy_dtov(s).unwrap()
}

/// `|a - b| <= tol * max(1, |b|)`, NaN failing.
fn assert_scalar(what: &str, i: usize, a: f64, b: f64, tol: f64) {
    assert!(
        (a - b).abs() <= tol * b.abs().max(1.0),
        "{what}[{i}]: kernel {a}, reference {b}"
    );
}

/// Softmax values below `2^-120` (relative to the upstream gradient) are
/// beyond float32's normal range; errors under this floor are not counted.
const GRAD_FLOOR: f64 = 7.52316384526264e-37;

/// One token-logprob case: fwd and bwd of an `[n, v]` matrix against the
/// float64 reference, for logits uniform in `[-scale, scale]`.
fn token_case<T: LogitElement>(
    gpu: &Gpu,
    n: usize,
    v: usize,
    scale: f32,
    seed: u64,
    quantise: impl Fn(f32) -> T,
    grad_tol: f64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let logits: Vec<T> = (0..n * v)
        .map(|_| quantise(scale * (2.0 * rng.random::<f32>() - 1.0)))
        .collect();
    let targets: Vec<i64> = (0..n).map(|_| rng.random_range(0..v as i64)).collect();
    let g: Vec<f32> = (0..n).map(|_| 2.0 * rng.random::<f32>() - 1.0).collect();

    let d_logits = upload(gpu, &logits);
    let d_targets = upload(gpu, &targets);
    let d_g = upload(gpu, &g);
    let mut logp = poisoned(gpu, n, f32::NAN);
    let mut lse = poisoned(gpu, 2 * n, f32::NAN);
    let mut grad = gpu
        .stream
        .memcpy_stod(&vec![quantise(f32::NAN); n * v])
        .unwrap();
    gpu.token_logprob_fwd(&d_logits, &d_targets, v, &mut logp, &mut lse)
        .unwrap();
    gpu.token_logprob_bwd(&d_logits, &d_targets, &lse, &d_g, v, &mut grad)
        .unwrap();
    let (logp, lse) = (download(gpu, &logp), download(gpu, &lse));
    let grad: Vec<T> = gpu.stream.memcpy_dtov(&grad).unwrap();

    let mut row = vec![0.0f64; v];
    for r in 0..n {
        for (dst, src) in row.iter_mut().zip(&logits[r * v..(r + 1) * v]) {
            *dst = src.to_f64();
        }
        let t = targets[r] as usize;
        let (want_logp, want_lse) = token_logprob(&row, t);
        let ctx = format!("V={v} N={n} scale={scale}");
        assert_scalar(
            &format!("{ctx} logp"),
            r,
            f64::from(logp[r]),
            want_logp,
            F32_VS_F64,
        );
        let got_lse = f64::from(lse[2 * r]) + f64::from(lse[2 * r + 1]);
        assert_scalar(&format!("{ctx} lse"), r, got_lse, want_lse, F32_VS_F64);
        let want = token_logprob_grad(&row, t, want_lse, f64::from(g[r]));
        let scale_row = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let worst = grad[r * v..(r + 1) * v]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a.to_f64() - b).abs())
            .fold(0.0f64, |m, e| {
                if e.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(e)
                }
            });
        let floor = f64::from(g[r]).abs() * GRAD_FLOOR;
        assert!(
            worst <= grad_tol * scale_row + floor,
            "{ctx} grad row {r}: max error {worst:e} vs row scale {scale_row:e}"
        );
    }
}

/// (V, N) of the token cases: every V of the issue, N up to 32768.
const TOKEN_SHAPES: [(usize, usize); 5] = [
    (1, 32768),
    (7, 32768),
    (1000, 32768),
    (50257, 512),
    (128256, 256),
];

// spec: C-TOKEN-LOGPROB
#[test]
fn token_logprob_f32_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (i, &(v, n)) in TOKEN_SHAPES.iter().enumerate() {
        for scale in [3.0f32, 1e4] {
            token_case::<f32>(&gpu, n, v, scale, 100 + i as u64, |x| x, F32_VS_F64);
        }
    }
}

// spec: C-TOKEN-LOGPROB
#[test]
fn token_logprob_bf16_matches_reference() {
    let Some(gpu) = gpu() else { return };
    for (i, &(v, n)) in TOKEN_SHAPES.iter().enumerate() {
        for scale in [3.0f32, 1e4] {
            token_case::<Bf16>(
                &gpu,
                n,
                v,
                scale,
                200 + i as u64,
                Bf16::from_f32,
                BF16_VS_F64,
            );
        }
    }
}

// spec: C-SEQ-LOGPROB
#[test]
fn masked_seq_sum_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (b, t_len) in [(1, 1), (37, 129), (512, 1024)] {
        let a: Vec<f32> = (0..b * t_len)
            .map(|_| -10.0 * rng.random::<f32>())
            .collect();
        let c: Vec<f32> = (0..b * t_len)
            .map(|_| -10.0 * rng.random::<f32>())
            .collect();
        let mask: Vec<f32> = (0..b)
            .flat_map(|_| {
                let len = rng.random_range(0..=t_len);
                (0..t_len).map(move |t| f32::from(u8::from(t < len)))
            })
            .collect();
        let (da, dc, dm) = (upload(&gpu, &a), upload(&gpu, &c), upload(&gpu, &mask));
        for with_c in [false, true] {
            let mut out = poisoned(&gpu, b, f32::NAN);
            gpu.masked_seq_sum(&da, with_c.then_some(&dc), &dm, t_len, &mut out)
                .unwrap();
            let out = download(&gpu, &out);
            for i in 0..b {
                let s = i * t_len..(i + 1) * t_len;
                let f = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
                let want = masked_sum(
                    &f(&a[s.clone()]),
                    with_c.then(|| f(&c[s.clone()])).as_deref(),
                    &f(&mask[s]),
                );
                assert_scalar("seq sum", i, f64::from(out[i]), want, F32_VS_F64);
            }
        }
    }
}

// spec: C-P3O-V1 C-P3O-V2 C-DPO C-CLIP
#[test]
fn pair_losses_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let n = 50_000;
    let mut u = |lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
    let lp_old: Vec<[f32; 2]> = (0..n)
        .map(|_| [u(-60.0, -1.0) as f32, u(-60.0, -1.0) as f32])
        .collect();
    // Steps up to +-0.6 in log-ratio: well past the clip band on both sides.
    let lp: Vec<[f32; 2]> = lp_old
        .iter()
        .map(|o| [o[0] + u(-0.6, 0.6) as f32, o[1] + u(-0.6, 0.6) as f32])
        .collect();
    let lp_ref: Vec<[f32; 2]> = (0..n)
        .map(|_| [u(-60.0, -1.0) as f32, u(-60.0, -1.0) as f32])
        .collect();
    let reward: Vec<[f64; 2]> = (0..n).map(|_| [u(-5.0, 5.0), u(-5.0, 5.0)]).collect();
    let col = |v: &[[f32; 2]], i: usize| v.iter().map(|p| p[i]).collect::<Vec<f32>>();
    let inputs = PairInputs {
        lp: [upload(&gpu, &col(&lp, 0)), upload(&gpu, &col(&lp, 1))],
        lp_old: [
            upload(&gpu, &col(&lp_old, 0)),
            upload(&gpu, &col(&lp_old, 1)),
        ],
        lp_ref: [
            upload(&gpu, &col(&lp_ref, 0)),
            upload(&gpu, &col(&lp_ref, 1)),
        ],
        reward: [0, 1].map(|i| upload(&gpu, &reward.iter().map(|r| r[i]).collect::<Vec<f64>>())),
    };
    for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo] {
        for h in [
            Hyper {
                beta: 0.05,
                epsilon: 0.2,
                vf_coef: 1.0,
            },
            Hyper {
                beta: 0.5,
                epsilon: f64::INFINITY,
                vf_coef: 1.0,
            },
        ] {
            let mut out = PairOutputs {
                loss: poisoned(&gpu, n, f32::NAN),
                grad: [poisoned(&gpu, n, f32::NAN), poisoned(&gpu, n, f32::NAN)],
            };
            gpu.pair_loss(alg, &inputs, h.beta, h.epsilon, &mut out)
                .unwrap();
            let (loss, g1, g2) = (
                download(&gpu, &out.loss),
                download(&gpu, &out.grad[0]),
                download(&gpu, &out.grad[1]),
            );
            let mut clipped = 0;
            for i in 0..n {
                let f = |p: [f32; 2]| [f64::from(p[0]), f64::from(p[1])];
                let c = PairConsts {
                    reward: reward[i],
                    lp_old: f(lp_old[i]),
                    lp_ref: f(lp_ref[i]),
                };
                let want = pair_loss(
                    alg,
                    &h,
                    &c,
                    PairVars {
                        lp: f(lp[i]),
                        value: 0.0,
                    },
                );
                let ctx = format!("{alg} eps={}", h.epsilon);
                assert_scalar(
                    &format!("{ctx} loss"),
                    i,
                    f64::from(loss[i]),
                    want.loss,
                    F32_VS_F64,
                );
                assert_scalar(
                    &format!("{ctx} d/dlp1"),
                    i,
                    f64::from(g1[i]),
                    want.grad.lp[0],
                    F32_VS_F64,
                );
                assert_scalar(
                    &format!("{ctx} d/dlp2"),
                    i,
                    f64::from(g2[i]),
                    want.grad.lp[1],
                    F32_VS_F64,
                );
                clipped += usize::from(want.grad.lp[0] == 0.0 || want.grad.lp[1] == 0.0);
            }
            if alg != Algorithm::Dpo && h.epsilon.is_finite() {
                assert!(
                    clipped > n / 10,
                    "{alg}: only {clipped} of {n} pairs had clipping active"
                );
            }
        }
    }
}

// spec: C-GAE
#[test]
fn gae_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (b, t_len) = (1000, 300);
    let r: Vec<f32> = (0..b * t_len).map(|_| rng.random::<f32>() - 0.5).collect();
    let v: Vec<f32> = (0..b * t_len)
        .map(|_| 2.0 * rng.random::<f32>() - 1.0)
        .collect();
    let m: Vec<f32> = (0..b)
        .flat_map(|_| {
            let len = rng.random_range(1..=t_len);
            (0..t_len).map(move |t| f32::from(u8::from(t < len)))
        })
        .collect();
    let (gamma, lambda) = (0.99, 0.95);
    let (dr, dv, dm) = (upload(&gpu, &r), upload(&gpu, &v), upload(&gpu, &m));
    let mut adv = poisoned(&gpu, b * t_len, f32::NAN);
    let mut ret = poisoned(&gpu, b * t_len, f32::NAN);
    gpu.gae(&dr, &dv, &dm, gamma, lambda, t_len, &mut adv, &mut ret)
        .unwrap();
    let (adv, ret) = (download(&gpu, &adv), download(&gpu, &ret));
    let f = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    for i in 0..b {
        let s = i * t_len..(i + 1) * t_len;
        let (wa, wr) = gae(
            &f(&r[s.clone()]),
            &f(&v[s.clone()]),
            &f(&m[s.clone()]),
            gamma,
            lambda,
        );
        for t in 0..t_len {
            assert_scalar(
                "advantage",
                i * t_len + t,
                f64::from(adv[s.start + t]),
                wa[t],
                F32_VS_F64,
            );
            assert_scalar(
                "return",
                i * t_len + t,
                f64::from(ret[s.start + t]),
                wr[t],
                F32_VS_F64,
            );
        }
    }
}

/// Bad shapes are errors, not launches.
// spec: C-TOKEN-LOGPROB
#[test]
fn launch_checks_shapes() {
    let Some(gpu) = gpu() else { return };
    let logits = upload(&gpu, &[0.0f32; 10]);
    let targets = upload(&gpu, &[0i64; 3]);
    let mut logp = poisoned(&gpu, 3, f32::NAN);
    let mut lse = poisoned(&gpu, 6, f32::NAN);
    assert!(matches!(
        gpu.token_logprob_fwd(&logits, &targets, 4, &mut logp, &mut lse),
        Err(CudaError::Input(_))
    ));
    // An out-of-range target gives NaN, never an out-of-bounds read.
    let logits = upload(&gpu, &[0.0f32; 8]);
    let targets = upload(&gpu, &[1i64, 9]);
    let mut logp = poisoned(&gpu, 2, 0.0f32);
    let mut lse = poisoned(&gpu, 4, 0.0f32);
    gpu.token_logprob_fwd(&logits, &targets, 4, &mut logp, &mut lse)
        .unwrap();
    let logp = download(&gpu, &logp);
    assert!(
        (logp[0] + 4f32.ln()).abs() < 1e-6 && logp[1].is_nan(),
        "{logp:?}"
    );
}
