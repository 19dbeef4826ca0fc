//! The optimizer's fused CPU pass against the same AdamW as libtorch tensor
//! operations, its host gradient norm against a float64 tensor sum, and its
//! float32 master copies of bfloat16 parameters.
#![cfg(feature = "torch")]

use std::path::Path;

use p3o::tolerance::HOST_VS_TENSOR_F32;
use p3o::train::builtin::tiny_model;
use p3o::train::config::TrainConfig;
use p3o::train::optim::{AdamW, Coefficients, adamw_host, adamw_tensors};
use p3o::train::trainer::Trainer;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn host(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.reshape([-1])).unwrap()
}

/// Largest `|a - b| / max(1e-3, |b|)` over the elements.
fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| f64::from((a - b).abs()) / f64::from(b.abs()).max(1e-3))
        .fold(0.0, f64::max)
}

#[test]
fn fused_host_adamw_matches_tensor_operations() {
    tch::manual_seed(7);
    // Longer than one chunk of the host pass and not a multiple of it.
    let n = 100_003;
    for weight_decay in [0.0, 0.01] {
        let mut p = Tensor::randn([n], (Kind::Float, Device::Cpu));
        let mut m = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let mut v = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let (mut hp, mut hm, mut hv) = (host(&p), host(&m), host(&v));
        let start = hp.clone();
        for t in 1..=5 {
            // Gradients over six orders of magnitude, some exactly zero.
            let g = Tensor::randn([n], (Kind::Float, Device::Cpu))
                * Tensor::randint(7, [n], (Kind::Float, Device::Cpu))
                    .exp2()
                    .g_mul_scalar(1e-3)
                * Tensor::rand([n], (Kind::Float, Device::Cpu)).gt(0.1);
            let k = Coefficients {
                c1: 1.0 - 0.9f64.powi(t),
                c2: 1.0 - 0.999f64.powi(t),
                lr: 1e-3,
                weight_decay,
            };
            adamw_tensors(&mut p, &g, &mut m, &mut v, &k);
            adamw_host(&mut hp, &host(&g), &mut hm, &mut hv, &k);
        }
        for (name, a, b) in [("p", &hp, &p), ("m", &hm, &m), ("v", &hv, &v)] {
            let err = max_rel(a, &host(b));
            assert!(
                err <= HOST_VS_TENSOR_F32,
                "weight_decay {weight_decay}: {name} differs by {err:e} (relative)"
            );
        }
        // The steps moved the weights: the comparison is not of two no-ops.
        assert!(max_rel(&hp, &start) > 1e-3);
    }
}

#[test]
fn host_gradient_norm_matches_a_float64_sum() {
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let a = vs.root().randn("a", &[300, 257], 0.0, 1.0);
    let b = vs.root().randn("b", &[33], 0.0, 1.0);
    let loss = (&a * &a * 3.0).sum(Kind::Float) + (&b * 3.0).exp().sum(Kind::Float) * 1e-6;
    loss.backward();
    let opt = AdamW::new(&[&vs], 0.0);
    let exact: f64 = [a.grad(), b.grad()]
        .iter()
        .map(|g| {
            g.to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt();
    let norm = opt.grad_norm();
    assert!(
        (norm - exact).abs() <= 1e-12 * exact,
        "host norm {norm} against float64 tensor norm {exact}"
    );
}

/// A bfloat16 parameter follows a float32 master copy: after steps far
/// below its rounding unit it equals the float32 run rounded to bfloat16,
/// and the master copy equals the float32 run exactly.
#[test]
fn bf16_parameters_accumulate_updates_in_a_float32_master_copy() {
    tch::manual_seed(11);
    let n = 4099;
    // Weights of the size of a language model's (std 0.02) and LayerNorm
    // scales (1.0), where a learning rate of 1e-5 moves a weight by well
    // under half a bfloat16 unit in one step.
    let init = Tensor::cat(
        &[
            Tensor::randn([n - 99], (Kind::Float, Device::Cpu)) * 0.02,
            Tensor::ones([99], (Kind::Float, Device::Cpu)),
        ],
        0,
    )
    // Exact in bfloat16, so that both runs start from the same weights.
    .to_kind(Kind::BFloat16)
    .to_kind(Kind::Float);
    // One gradient for every step and both runs, exact in bfloat16, so that
    // each step moves a weight by about the learning rate.
    let grad = (Tensor::randn([n], (Kind::Float, Device::Cpu)) * 1e-2)
        .to_kind(Kind::BFloat16)
        .to_kind(Kind::Float);
    let run = |kind: Kind| {
        let mut vs = VarStore::new(Device::Cpu);
        let mut w = vs.root().zeros("w", &[n]);
        tch::no_grad(|| w.copy_(&init));
        if kind == Kind::BFloat16 {
            vs.bfloat16();
        }
        let w = vs.variables()["w"].shallow_clone();
        let mut opt = AdamW::new(&[&vs], 0.01);
        for _ in 0..40 {
            opt.zero_grad();
            (&w * grad.to_kind(kind)).sum(Kind::Float).backward();
            opt.step(1e-5);
        }
        (w, opt)
    };
    let (w32, _) = run(Kind::Float);
    let (w16, opt16) = run(Kind::BFloat16);
    let master = opt16.master[0]
        .as_ref()
        .expect("a bf16 parameter has a master copy");
    assert_eq!(master.kind(), Kind::Float);
    assert_eq!(
        host(master),
        host(&w32),
        "the master copy is the float32 run"
    );
    assert_eq!(
        host(&w16.to_kind(Kind::Float)),
        host(&w32.to_kind(Kind::BFloat16).to_kind(Kind::Float)),
        "the bf16 weights are the float32 run rounded"
    );
    // Most weights moved by more than a bfloat16 half unit in total, which a
    // bf16-only update (rounding each 1e-5 step away) does not do.
    let start = host(&init);
    let moved = host(&w16.to_kind(Kind::Float))
        .iter()
        .zip(&start)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        moved as i64 > n / 2,
        "only {moved} of {n} bf16 weights moved"
    );
}

/// Under `dtype = bf16` the master copies are the float32 weights
/// themselves, taken before the policy is rounded: at step 0 each equals
/// the float32 initial weight, which bfloat16 mostly cannot hold.
#[test]
fn bf16_master_copies_start_from_the_float32_weights() {
    tch::manual_seed(12);
    let n = 4096;
    let init = Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.02;
    let rounded = host(&init.to_kind(Kind::BFloat16).to_kind(Kind::Float));
    let differ = rounded
        .iter()
        .zip(host(&init))
        .filter(|(a, b)| **a != *b)
        .count();
    assert!(
        differ > n as usize / 2,
        "only {differ} weights round: no teeth"
    );
    let mut vs = VarStore::new(Device::Cpu);
    let mut w = vs.root().zeros("w", &[n]);
    tch::no_grad(|| w.copy_(&init));
    let mut opt = AdamW::new(&[&vs], 0.0);
    opt.lower_precision(&mut vs, Kind::BFloat16);
    let p = &opt.params[0].1;
    assert_eq!(p.kind(), Kind::BFloat16);
    assert_eq!(
        host(&p.to_kind(Kind::Float)),
        rounded,
        "the policy computes in bf16"
    );
    let master = opt.master[0].as_ref().expect("a master copy");
    assert_eq!(
        host(master),
        host(&init),
        "the master copy is the float32 weight"
    );

    // The trainer: its master copies are the built-in model's float32 init.
    let cfg = TrainConfig::load(None, &["dtype=bf16".to_string()]).unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bf16-master");
    let trainer = Trainer::new(cfg, &out, None).unwrap();
    let init = tiny_model(0, Device::Cpu).unwrap().vs.variables();
    let opt = trainer.optimizer();
    for ((name, p), master) in opt.params.iter().zip(&opt.master) {
        assert_eq!(p.kind(), Kind::BFloat16, "{name}");
        let master = master
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no master copy"));
        assert_eq!(host(master), host(&init[name]), "{name}");
    }
    assert_eq!(opt.params.len(), init.len());
}
