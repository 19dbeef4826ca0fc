//! The CUDA kernels on libtorch tensors (features `cuda` and `torch`): the
//! tensor launchers against the float64 reference, `kernels = cuda`
//! chained into autograd giving libtorch's own parameter gradients, and
//! `p3o train` with the kernels ending where it ends without them. Each
//! runs on the GPU (reported as skipped without one, failing under
//! `P3O_REQUIRE_GPU=1`) and, as
//! `host_*` with smaller shapes, on CPU tensors with the host execution of
//! the same kernel sources (`kernels = cuda-host`).
#![cfg(all(feature = "cuda", feature = "torch"))]

mod common;

use p3o::cuda::Gpu;
use p3o::cuda::compare::{GaeOutputs, TokenRow, check_gae, check_seq_sums, check_token_row};
use p3o::cuda::host::Host;
use p3o::cuda::torch_ops::TensorKernels;
use p3o::ops::fused_head::ChunkMath;
use p3o::ops::fused_head::cuda::KernelMath;
use p3o::ops::fused_head::torch::TorchMath;
use p3o::tolerance::{
    BF16_GRAD, BF16_HEAD, BF16_VS_F64, F32_GRAD, F32_VS_F64, KERNELS_VS_TORCH_STEP,
};
use p3o::train::config::KernelBackend;
use p3o::train::kernels::{Kernels, backward};
use tch::{Device, Kind, Tensor};

/// The device, or `None` after reporting the test as skipped (a failure
/// under `P3O_REQUIRE_GPU=1`).
fn gpu() -> Option<Gpu> {
    if !tch::Cuda::is_available() {
        common::skip_without_gpu("no CUDA device (libtorch sees none)");
        return None;
    }
    match Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            common::skip_without_gpu(&format!("no CUDA device ({e})"));
            None
        }
    }
}

/// The backend that config key `kernels` spells `name`, for `dev`.
fn kernels_named(name: &str, dev: Device) -> Result<Kernels, p3o::train::error::TrainError> {
    let backend: KernelBackend = serde_json::from_value(serde_json::json!(name)).unwrap();
    Kernels::new(backend, dev)
}

fn host(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1])).unwrap()
}

/// `kernels = cuda` is refused with a clear error off a CUDA device, on any
/// machine.
#[test]
fn cuda_kernels_need_a_cuda_device() {
    let err = match kernels_named("cuda", Device::Cpu) {
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
    use p3o::train::scoring::token_window_with;
    let model = tiny_model(3, dev).unwrap();
    let cuda = kernels_named(name, dev).unwrap();
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
    let (lp_t, g_t) = grads(&Kernels::MATERIALISED);
    for kernels in [cuda.clone(), cuda.with_head_chunk(2)] {
        let (lp_c, g_c) = grads(&kernels);
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
}

/// The fused head ([C-FUSED-HEAD]) with `math` on `device` against the
/// float64 reference: float32 over shapes, chunks and entries (logits up to
/// about 1e4, ties), bfloat16 within [`BF16_HEAD`]'s bound.
fn check_fused_head(math: &dyn ChunkMath, device: Device, large_vocab: bool) {
    use common::fused_head::{Bounds, Entries, case, worst_ratio};
    let f32_bounds = Bounds {
        value: F32_VS_F64,
        per_logit: 0.0,
        grad: F32_VS_F64,
    };
    let bf16_bounds = Bounds {
        value: 0.0,
        per_logit: BF16_HEAD,
        grad: BF16_HEAD,
    };
    let mut seed = 0;
    let mut shapes = vec![(1, 1, 1), (5, 3, 2), (13, 8, 37), (37, 16, 300)];
    if large_vocab {
        shapes.push((5, 4, 152064));
    }
    for &(n, h, v) in &shapes {
        for entries in [
            Entries::Exact {
                max_weight: 100.0,
                ties: true,
            },
            Entries::Exact {
                max_weight: 0.5,
                ties: true,
            },
            Entries::Uniform { scale: 1.0 },
        ] {
            for &chunk in &[2i64, 7] {
                seed += 1;
                let c = case(seed, n, h, v, entries, true, true, chunk);
                let r = worst_ratio(&c, math, Kind::Float, device, f32_bounds);
                assert!(
                    r <= 1.0,
                    "float32 {r} of the bound: n={n} h={h} v={v} chunk={chunk} {entries:?}"
                );
            }
        }
        seed += 1;
        let entries = Entries::Exact {
            max_weight: 2.0,
            ties: true,
        };
        let c = case(seed, n, h, v, entries, true, true, 3);
        let r = worst_ratio(&c, math, Kind::BFloat16, device, bf16_bounds);
        assert!(r <= 1.0, "bfloat16 {r} of the bound: n={n} h={h} v={v}");
    }
}

// spec: C-FUSED-HEAD
#[test]
fn fused_head_on_the_gpu_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    check_fused_head(&TorchMath, Device::Cuda(0), true);
    check_fused_head(&KernelMath(std::sync::Arc::new(gpu)), Device::Cuda(0), true);
}

// spec: C-FUSED-HEAD
#[test]
fn host_fused_head_kernels_match_the_reference() {
    check_fused_head(&KernelMath(std::sync::Arc::new(Host)), Device::Cpu, false);
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-FUSED-HEAD
#[test]
fn cuda_kernels_chain_into_autograd() {
    if gpu().is_none() {
        return;
    }
    check_chain_into_autograd("cuda", Device::Cuda(0));
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-FUSED-HEAD
#[test]
fn host_cuda_kernels_chain_into_autograd() {
    check_chain_into_autograd("cuda-host", Device::Cpu);
}

/// `kernels = cuda-host` runs on CPU tensors only.
#[test]
fn cuda_host_kernels_need_the_cpu() {
    let err = match kernels_named("cuda-host", Device::Cuda(0)) {
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
    let kernels = kernels_named(name, dev).unwrap();
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
                ..Hyper::default()
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
            let (want, want_g) = run(&Kernels::TORCH);
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

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_device(Device::Cpu).reshape([-1])).unwrap()
}

/// The sequence-sum and GAE tensor launchers against the reference on
/// `[B, T]` batches whose masks are left-padded (the trainer's response
/// windows) or right-padded, rows of random lengths from 0 to T, with and
/// without a subtrahend; then batches of no tokens.
fn check_sequence_tensor_launchers(kernels: &dyn TensorKernels, b: i64, t: i64) {
    let dev = kernels.device();
    tch::manual_seed(5);
    let lens = Tensor::randint(t + 1, [b, 1], (Kind::Int64, dev));
    let cols = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
    let left = cols.ge_tensor(&(-&lens + t)).to_kind(Kind::Float);
    let right = cols.lt_tensor(&lens).to_kind(Kind::Float);
    let uniform = |lo: f64, hi: f64| Tensor::rand([b, t], (Kind::Float, dev)) * (hi - lo) + lo;
    let (a, c) = (uniform(-30.0, 0.0), uniform(-30.0, 0.0));
    let (r, v) = (uniform(-2.0, 2.0), uniform(-5.0, 5.0));
    for mask in [&left, &right] {
        for sub in [None, Some(&c)] {
            let out = kernels.masked_seq_sum_tensor(&a, sub, mask).unwrap();
            assert_eq!(out.size(), [b]);
            let sub = sub.map(floats);
            let (a, m) = (floats(&a), floats(mask));
            if let Err((row, e)) = check_seq_sums(&a, sub.as_deref(), &m, t as usize, &floats(&out))
            {
                panic!("masked_seq_sum_tensor, B={b} T={t}, row {row}: {e}");
            }
        }
        for (gamma, lambda) in [(1.0, 0.95), (0.99, 0.9)] {
            let (adv, ret) = kernels.gae_tensor(&r, &v, mask, gamma, lambda).unwrap();
            let (adv, ret) = (floats(&adv), floats(&ret));
            let out = GaeOutputs {
                adv: &adv,
                ret: &ret,
            };
            let inputs = (&floats(&r)[..], &floats(&v)[..], &floats(mask)[..]);
            if let Err((at, e)) = check_gae(inputs, (gamma, lambda), t as usize, out) {
                panic!("gae_tensor, B={b} T={t}, at {at:?}: {e}");
            }
        }
    }
    // No tokens: zero sums and empty advantages, without a launch.
    let none = Tensor::zeros([b, 0], (Kind::Float, dev));
    let sums = kernels.masked_seq_sum_tensor(&none, None, &none).unwrap();
    assert_eq!(floats(&sums), vec![0.0; b as usize]);
    let (adv, _) = kernels.gae_tensor(&none, &none, &none, 1.0, 1.0).unwrap();
    assert_eq!(adv.size(), [b, 0]);
    // Other dtypes, shapes and layouts are refused, not read.
    let double = a.to_kind(Kind::Double);
    assert!(kernels.masked_seq_sum_tensor(&double, None, &left).is_err());
    assert!(
        kernels
            .masked_seq_sum_tensor(&a, None, &left.narrow(1, 0, t - 1))
            .is_err()
    );
    assert!(kernels.gae_tensor(&r, &v, &left.tr(), 1.0, 1.0).is_err());
    assert!(
        kernels
            .gae_tensor(&r.reshape([-1]), &v, &left, 1.0, 1.0)
            .is_err()
    );
}

// spec: C-SEQ-LOGPROB C-GAE
#[test]
fn sequence_tensor_launchers_match_reference() {
    let Some(gpu) = gpu() else { return };
    check_sequence_tensor_launchers(&gpu, 300, 700);
}

// spec: C-SEQ-LOGPROB C-GAE
#[test]
fn host_sequence_tensor_launchers_match_reference() {
    check_sequence_tensor_launchers(&Host, 9, 40);
}

/// The trainer's routes into the sequence kernels ([`Kernels::gae`],
/// [`Kernels::sequence_sums`]) with `kernels = name` on `dev`, against the
/// reference, on rows of left-padded responses with values that are not 0
/// (the first training step's value head is, so the step test below cannot
/// see how values and value targets are passed).
fn check_trainer_sequence_routes(name: &str, dev: Device) {
    let kernels = kernels_named(name, dev).unwrap();
    tch::manual_seed(3);
    let (n, l) = (6usize, 12usize);
    let lens = [12, 1, 7, 0, 3, 12];
    let mask: Vec<Vec<f64>> = lens
        .iter()
        .map(|&k| (0..l).map(|t| f64::from(u8::from(t >= l - k))).collect())
        .collect();
    // float32 values, so both routes read the same numbers.
    let rows = |lo: f64, hi: f64| -> Vec<Vec<f64>> {
        let t = Tensor::rand([n as i64, l as i64], (Kind::Float, Device::Cpu)) * (hi - lo) + lo;
        Vec::<Vec<f32>>::try_from(&t)
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect()
    };
    let (r, v) = (rows(-2.0, 2.0), rows(-5.0, 5.0));
    let (gamma, lambda) = (0.97, 0.9);
    let (adv, ret) = kernels.gae(&r, &v, &mask, gamma, lambda).unwrap();
    let flat = |x: &[Vec<f64>]| x.iter().flatten().map(|&y| y as f32).collect::<Vec<f32>>();
    let out = GaeOutputs {
        adv: &flat(&adv),
        ret: &flat(&ret),
    };
    let inputs = (&flat(&r)[..], &flat(&v)[..], &flat(&mask)[..]);
    if let Err((at, e)) = check_gae(inputs, (gamma, lambda), l, out) {
        panic!("Kernels::gae with kernels = {name}, at {at:?}: {e}");
    }
    let to_t = |x: &[Vec<f64>]| {
        Tensor::from_slice(&flat(x))
            .view([n as i64, l as i64])
            .to_device(dev)
    };
    let sums = kernels.sequence_sums(&to_t(&r), &to_t(&mask)).unwrap();
    assert_eq!(sums.device(), dev);
    if let Err((row, e)) = check_seq_sums(&flat(&r), None, &flat(&mask), l, &floats(&sums)) {
        panic!("Kernels::sequence_sums with kernels = {name}, row {row}: {e}");
    }
}

// spec: C-SEQ-LOGPROB C-GAE
#[test]
fn trainer_sequence_routes_match_reference() {
    if gpu().is_none() {
        return;
    }
    check_trainer_sequence_routes("cuda", Device::Cuda(0));
}

// spec: C-SEQ-LOGPROB C-GAE
#[test]
fn host_trainer_sequence_routes_match_reference() {
    check_trainer_sequence_routes("cuda-host", Device::Cpu);
}

/// `p3o train` on the built-in task with `kernels = name` against
/// `kernels = torch`, on `device`, in float32 and bfloat16: one step of one
/// minibatch, so both runs sample the same responses from the same weights,
/// and the step's loss, gradient norm, KL and ratio statistics agree to
/// float32 roundings (bfloat16 ones for bfloat16 weights), for P3O-V2 (the
/// token, sequence-sum and pair kernels) and PPO (the token and GAE
/// kernels). (Weights after the update are not compared: Adam's first
/// step moves every weight by about `lr` in the direction of its gradient's
/// sign, which float32 roundings flip where a gradient is near 0.)
fn check_training_with_kernels(name: &str, device: &str) {
    use p3o::train::config::TrainConfig;
    use p3o::train::trainer::Trainer;
    use p3o::train::trainer::metrics::{MetricsLine, StepMetrics};
    // In bfloat16 both sides round the logits' gradient to bfloat16, and an
    // entry whose two float32 values straddle a rounding boundary differs by
    // one bfloat16 rounding, which the backward through the model carries on.
    let dtypes = [("f32", KERNELS_VS_TORCH_STEP), ("bf16", BF16_VS_F64)];
    let cases = ["p3o-v2", "ppo"]
        .into_iter()
        .flat_map(|a| dtypes.map(|d| (a, d)));
    for (alg, (dtype, tol)) in cases {
        let run = |kernels: &str| {
            let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "kernels-{alg}-{dtype}-{kernels}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&out);
            let set = [
                format!("algorithm={alg}"),
                format!("kernels={kernels}"),
                format!("device={device}"),
                "steps=1".into(),
                "epochs=1".into(),
                "batch_size=4".into(),
                "minibatch_size=4".into(),
                "max_new_tokens=8".into(),
                "eval_every=0".into(),
                "checkpoint_every=0".into(),
                format!("dtype={dtype}"),
            ];
            let cfg = TrainConfig::load(None, &set).unwrap();
            let last = Trainer::new(cfg, &out, None).unwrap().run().unwrap();
            let _ = std::fs::remove_dir_all(&out);
            match last {
                Some(MetricsLine::Step(m)) => m,
                other => panic!("{alg} {dtype} {kernels}: not a training step: {other:?}"),
            }
        };
        let (want, got) = (run("torch"), run(name));
        type Field = (&'static str, fn(&StepMetrics) -> f64);
        let fields: [Field; 5] = [
            ("loss", |m| m.loss),
            ("grad_norm", |m| m.grad_norm),
            ("kl_mean", |m| m.kl_mean),
            ("ratio_mean", |m| m.ratio_mean),
            ("reward_mean", |m| m.reward_mean),
        ];
        for (key, field) in fields {
            let (a, b) = (field(&want), field(&got));
            println!("{alg} {dtype}, {key}: kernels = torch {a} | kernels = {name} {b}");
            assert!(
                (a - b).abs() <= tol * a.abs().max(1.0),
                "{alg} {dtype}: {key} {b} with kernels = {name}, {a} with torch"
            );
        }
    }
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-GAE C-P3O-V2 C-PPO-TOKEN
#[test]
fn training_with_cuda_kernels_matches_torch() {
    if gpu().is_none() {
        return;
    }
    check_training_with_kernels("cuda", "cuda");
}

// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-GAE C-P3O-V2 C-PPO-TOKEN
#[test]
fn host_training_with_cuda_host_kernels_matches_torch() {
    check_training_with_kernels("cuda-host", "cpu");
}
