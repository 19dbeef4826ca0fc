//! The CUDA kernels on libtorch tensors (features `cuda` and `torch`): the
//! tensor launchers against the float64 reference, and `kernels = cuda`
//! chained into autograd giving libtorch's own parameter gradients. Each
//! runs on the GPU (printing 'skipped: no CUDA device' without one) and, as
//! `host_*` with smaller shapes, on CPU tensors with the host execution of
//! the same kernel sources (`kernels = cuda-host`).
#![cfg(all(feature = "cuda", feature = "torch"))]

use p3o::cuda::Gpu;
use p3o::cuda::compare::{TokenRow, check_token_row};
use p3o::cuda::host::Host;
use p3o::cuda::torch_ops::TensorKernels;
use p3o::tolerance::{BF16_GRAD, F32_GRAD, F32_VS_F64};
use p3o::train::kernels::{Kernels, backward};
use tch::{Device, Kind, Tensor};

/// The device, or `None` after printing why the test is skipped.
fn gpu() -> Option<Gpu> {
    if !tch::Cuda::is_available() {
        println!("skipped: no CUDA device (libtorch sees none)");
        return None;
    }
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn host(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1])).unwrap()
}

/// `kernels = cuda` is refused with a clear error off a CUDA device, on any
/// machine.
#[test]
fn cuda_kernels_need_a_cuda_device() {
    let err = match Kernels::from_name("cuda", Device::Cpu) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("kernels = cuda accepted on the CPU"),
    };
    assert!(err.contains("device = cuda"), "{err}");
}

/// The tensor launchers of `kernels` against the reference over `shapes`
/// ((N, V) pairs), float32 and bfloat16.
fn check_tensor_launchers(kernels: &dyn TensorKernels, shapes: &[(i64, i64)]) {
    let dev = kernels.device();
    tch::manual_seed(7);
    for (kind, tol) in [(Kind::Float, F32_GRAD), (Kind::BFloat16, BF16_GRAD)] {
        for &(n, v) in shapes {
            let logits = (Tensor::rand([n, v], (Kind::Float, dev)) * 20.0 - 10.0).to_kind(kind);
            let targets = Tensor::randint(v, [n], (Kind::Int64, dev));
            let g = Tensor::rand([n], (Kind::Float, dev)) * 2.0 - 1.0;
            let (logp, lse) = kernels.token_logprob_fwd_tensor(&logits, &targets).unwrap();
            let grad = kernels
                .token_logprob_bwd_tensor(&logits, &targets, &lse, &g)
                .unwrap();
            assert_eq!(grad.kind(), kind);
            let (x, t, g) = (host(&logits), host(&targets), host(&g));
            let (logp, lse, grad) = (host(&logp), host(&lse), host(&grad));
            let v = v as usize;
            for r in 0..n as usize {
                let cols = r * v..(r + 1) * v;
                let row = TokenRow {
                    logits: &x[cols.clone()],
                    target: t[r] as usize,
                    g: g[r],
                    logp: logp[r],
                    lse: lse[2 * r] + lse[2 * r + 1],
                    grad: &grad[cols],
                };
                if let Err(e) = check_token_row(row, tol) {
                    panic!("{kind:?} V={v} row {r}: {e}");
                }
            }
        }
    }
    // Other dtypes and non-contiguous tensors are refused, not read.
    let t = Tensor::zeros([2], (Kind::Int64, dev));
    let double = Tensor::zeros([2, 3], (Kind::Double, dev));
    assert!(kernels.token_logprob_fwd_tensor(&double, &t).is_err());
    let strided = Tensor::zeros([3, 2], (Kind::Float, dev)).tr();
    assert!(kernels.token_logprob_fwd_tensor(&strided, &t).is_err());
}

// spec: C-TOKEN-LOGPROB
#[test]
fn tensor_launchers_match_reference() {
    let Some(gpu) = gpu() else { return };
    check_tensor_launchers(&gpu, &[(64, 1000), (16, 50257)]);
    // Tensors elsewhere are refused, not read.
    let cpu = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let t = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
    assert!(gpu.token_logprob_fwd_tensor(&cpu, &t).is_err());
}

// spec: C-TOKEN-LOGPROB
#[test]
fn host_tensor_launchers_match_reference() {
    check_tensor_launchers(&Host, &[(8, 1000), (2, 50257)]);
}

/// The two-phase backward with the kernels named `name` gives autograd's
/// parameter gradients on a model on `dev`.
fn check_chain_into_autograd(name: &str, dev: Device) {
    use p3o::train::builtin::tiny_model;
    use p3o::train::rollout::token_window_with;
    let model = tiny_model(3, dev).unwrap();
    let cuda = Kernels::from_name(name, dev).unwrap();
    let prompts: Vec<Vec<i64>> = vec![vec![5, 9, 12], vec![7], vec![30, 31]];
    let responses: Vec<Vec<i64>> = vec![vec![40, 41, 42, 0], vec![50], vec![60, 61]];
    let weights = Tensor::from_slice(&[0.7f32, -1.3, 0.4]).to_device(dev);
    let grads = |kernels: &Kernels| -> (Vec<f64>, Vec<f64>) {
        let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, p) in &vars {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let (w, detached) = token_window_with(&model, None, &prompts, &responses, kernels).unwrap();
        let seq = w.lp.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        let loss = (&seq * &weights).sum(Kind::Float) + seq.square().sum(Kind::Float) * 0.01;
        backward(&loss, detached.as_ref()).unwrap();
        let g = vars.iter().flat_map(|(_, p)| host(&p.grad())).collect();
        (host(&seq.detach()), g)
    };
    let (lp_t, g_t) = grads(&Kernels::Torch);
    let (lp_c, g_c) = grads(&cuda);
    for (a, b) in lp_t.iter().zip(&lp_c) {
        assert!((a - b).abs() <= F32_VS_F64 * a.abs().max(1.0), "{a} vs {b}");
    }
    let scale = g_t.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = g_t
        .iter()
        .zip(&g_c)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        scale > 0.0 && diff <= 1e-4 * scale,
        "max gradient difference {diff} (scale {scale})"
    );
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB
#[test]
fn cuda_kernels_chain_into_autograd() {
    if gpu().is_none() {
        return;
    }
    check_chain_into_autograd("cuda", Device::Cuda(0));
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB
#[test]
fn host_cuda_kernels_chain_into_autograd() {
    check_chain_into_autograd("cuda-host", Device::Cpu);
}

/// `kernels = cuda-host` runs on CPU tensors only.
#[test]
fn cuda_host_kernels_need_the_cpu() {
    let err = match Kernels::from_name("cuda-host", Device::Cuda(0)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("kernels = cuda-host accepted on a CUDA device"),
    };
    assert!(err.contains("device = cpu"), "{err}");
}

/// The pair losses through the kernels (`Kernels::pair_loss` with `name`)
/// against the libtorch ops: the same value and the same gradients with
/// respect to the sequence log-probs, with clipping active and without.
fn check_pair_losses(name: &str, dev: Device) {
    use p3o::reference::{Algorithm, Hyper};
    use p3o::train::losses::PairBatch;
    let kernels = Kernels::from_name(name, dev).unwrap();
    tch::manual_seed(11);
    let p = 300;
    let uniform = |lo: f64, hi: f64| Tensor::rand([p], (Kind::Float, dev)) * (hi - lo) + lo;
    let old = [uniform(-60.0, -1.0), uniform(-60.0, -1.0)];
    let steps = [uniform(-0.6, 0.6), uniform(-0.6, 0.6)];
    let refs = [uniform(-60.0, -1.0), uniform(-60.0, -1.0)];
    let rewards = [0, 1].map(|_| uniform(-5.0, 5.0).to_kind(Kind::Double));
    for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo] {
        for epsilon in [0.2, f64::INFINITY] {
            let h = Hyper {
                beta: 0.05,
                epsilon,
                vf_coef: 1.0,
            };
            let run = |k: &Kernels| {
                let lp = [0, 1].map(|i| (&old[i] + &steps[i]).set_requires_grad(true));
                let batch = PairBatch {
                    lp: [&lp[0], &lp[1]],
                    lp_old: [&old[0], &old[1]],
                    lp_ref: [&refs[0], &refs[1]],
                    reward: [&rewards[0], &rewards[1]],
                };
                let loss = k.pair_loss(alg, &h, &batch).unwrap();
                loss.backward();
                let grads: Vec<f64> = lp.iter().flat_map(|t| host(&t.grad())).collect();
                (loss.double_value(&[]), grads)
            };
            let (want, want_g) = run(&Kernels::Torch);
            let (got, got_g) = run(&kernels);
            assert!(
                (got - want).abs() <= F32_VS_F64 * want.abs().max(1.0),
                "{alg} eps={epsilon}: loss {got} vs {want}"
            );
            let scale = want_g.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            let zeros = want_g.iter().filter(|&&g| g == 0.0).count();
            for (a, b) in got_g.iter().zip(&want_g) {
                assert!(
                    (a - b).abs() <= F32_VS_F64 * scale,
                    "{alg} eps={epsilon}: gradient {a} vs {b}"
                );
            }
            if alg != Algorithm::Dpo && epsilon.is_finite() {
                assert!(zeros as i64 > p / 10, "{alg}: clipping was never active");
            }
        }
    }
}

// spec: C-P3O-V1 C-P3O-V2 C-DPO C-CLIP
#[test]
fn cuda_pair_losses_match_torch() {
    if gpu().is_none() {
        return;
    }
    check_pair_losses("cuda", Device::Cuda(0));
}

// spec: C-P3O-V1 C-P3O-V2 C-DPO C-CLIP
#[test]
fn host_cuda_pair_losses_match_torch() {
    check_pair_losses("cuda-host", Device::Cpu);
}
