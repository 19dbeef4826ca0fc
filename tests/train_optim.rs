//! The optimizer's fused CPU pass against the same AdamW as libtorch tensor
//! operations, and its host gradient norm against a float64 tensor sum.
#![cfg(feature = "torch")]

use p3o::tolerance::HOST_VS_TENSOR_F32;
use p3o::train::optim::{AdamW, Coefficients, adamw_host, adamw_tensors};
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
