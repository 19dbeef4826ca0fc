//! Cases of the fused LM head ([C-FUSED-HEAD]) for its fast paths, and the
//! comparison of a fast path with the float64 reference on the same
//! (rounded) inputs.

use p3o::ops::fused_head::reference::{self, HeadInputs};
use p3o::ops::fused_head::{self, ChunkMath, HeadTensors};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// A case: the inputs, the upstream gradients of `logp` and (optionally)
/// of the entropy, and the rows per chunk.
#[derive(Clone, Debug)]
pub struct Case {
    pub x: HeadInputs,
    pub a: Vec<f64>,
    pub c: Option<Vec<f64>>,
    pub chunk: i64,
}

/// How a case's entries are drawn.
#[derive(Clone, Copy, Debug)]
pub enum Entries {
    /// Logits exact in float32 whatever the order of the head product's
    /// sums: integer hidden states in `+-8`, weights and biases multiples
    /// of 1/4 with `|w| <= max_weight`, temperature a power of two; with
    /// `ties`, some weight rows repeat others, so rows have tied logits.
    Exact { max_weight: f64, ties: bool },
    /// Uniform entries in `+-scale`.
    Uniform { scale: f64 },
}

/// A seeded case of `n` rows, hidden size `h`, vocabulary `v`.
#[allow(clippy::too_many_arguments)]
pub fn case(
    seed: u64,
    n: usize,
    h: usize,
    v: usize,
    entries: Entries,
    bias: bool,
    entropy_grad: bool,
    chunk: i64,
) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let uniform = |s: f64, rng: &mut ChaCha8Rng| s * (2.0 * rng.random::<f64>() - 1.0);
    let (hidden, mut weight, b, temperature): (Vec<f64>, Vec<f64>, Vec<f64>, f64) = match entries {
        Entries::Exact { max_weight, .. } => {
            let q = (4.0 * max_weight) as i64;
            let hidden = (0..n * h)
                .map(|_| rng.random_range(-8..=8) as f64)
                .collect();
            let weight = (0..v * h)
                .map(|_| rng.random_range(-q..=q) as f64 / 4.0)
                .collect();
            let b = (0..v)
                .map(|_| rng.random_range(-q..=q) as f64 / 4.0)
                .collect();
            let temperature = [0.5, 1.0, 2.0][rng.random_range(0..3)];
            (hidden, weight, b, temperature)
        }
        Entries::Uniform { scale } => {
            let hidden = (0..n * h).map(|_| uniform(scale, &mut rng)).collect();
            let weight = (0..v * h).map(|_| uniform(scale, &mut rng)).collect();
            let b = (0..v).map(|_| uniform(scale, &mut rng)).collect();
            (hidden, weight, b, 0.5 + 1.5 * rng.random::<f64>())
        }
    };
    if let Entries::Exact { ties: true, .. } = entries {
        for row in 1..v {
            if rng.random_bool(0.3) {
                let from = rng.random_range(0..row);
                let copy: Vec<f64> = weight[from * h..(from + 1) * h].to_vec();
                weight[row * h..(row + 1) * h].copy_from_slice(&copy);
            }
        }
    }
    let targets = (0..n).map(|_| rng.random_range(0..v)).collect();
    let a = (0..n).map(|_| uniform(2.0, &mut rng)).collect();
    let c = entropy_grad.then(|| (0..n).map(|_| uniform(2.0, &mut rng)).collect());
    let mut bias_values = b;
    if let Entries::Exact { ties: true, .. } = entries {
        // Tied weight rows tie their logits only with equal biases.
        bias_values.iter_mut().for_each(|b| *b = 0.0);
    }
    Case {
        x: HeadInputs {
            n,
            h,
            v,
            hidden,
            weight,
            bias: bias.then_some(bias_values),
            targets,
            temperature,
        },
        a,
        c,
        chunk,
    }
}

/// Bounds of a fast path against the reference: per row `|d logp|,
/// |d H| <= value * (1 + |ref|)` plus `per_logit * max_v |z_v|` (the
/// rounding of the logits themselves in bfloat16); gradient entries
/// `|d| <= (grad + 4 per_logit max |z|) scale`, `scale` the sum of the
/// magnitudes that form the entry (a softmax value moves by about twice
/// its logits' error, relative).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub value: f64,
    pub per_logit: f64,
    pub grad: f64,
}

fn tensor(x: &[f64], shape: &[i64], kind: Kind, device: Device) -> Tensor {
    Tensor::from_slice(x)
        .reshape(shape)
        .to_kind(kind)
        .to_device(device)
}

fn host(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1])).unwrap()
}

/// The largest error of `math` on `case` (inputs in `kind` on `device`)
/// as a fraction of its bound: at most 1 where the fast path holds.
pub fn worst_ratio(
    case: &Case,
    math: &dyn ChunkMath,
    kind: Kind,
    device: Device,
    b: Bounds,
) -> f64 {
    let x = &case.x;
    let (n, h, v) = (x.n as i64, x.h as i64, x.v as i64);
    let hidden = tensor(&x.hidden, &[n, h], kind, device);
    let weight = tensor(&x.weight, &[v, h], kind, device);
    let bias = x.bias.as_ref().map(|b| tensor(b, &[v], kind, device));
    let targets = Tensor::from_slice(&x.targets.iter().map(|&t| t as i64).collect::<Vec<_>>())
        .to_device(device);
    // The reference on the inputs as the fast path sees them.
    let rounded = HeadInputs {
        hidden: host(&hidden),
        weight: host(&weight),
        bias: bias.as_ref().map(host),
        ..x.clone()
    };
    let t = HeadTensors {
        hidden: &hidden,
        weight: &weight,
        bias: bias.as_ref(),
        targets: &targets,
        temperature: x.temperature,
        chunk: case.chunk,
    };
    let fwd = fused_head::forward(&t, math, true).unwrap();
    let want = reference::forward(&rounded);
    let zmax: Vec<f64> = (0..x.n)
        .map(|r| rounded.logits(r).iter().fold(0.0f64, |m, z| m.max(z.abs())))
        .collect();
    let mut worst = 0.0f64;
    let mut see = |got: f64, want: f64, bound: f64| {
        let err = (got - want).abs();
        worst = worst.max(if err == 0.0 { 0.0 } else { err / bound });
        if !got.is_finite() {
            worst = f64::INFINITY;
        }
    };
    for (r, (got, want)) in host(&fwd.logp).iter().zip(&want.logp).enumerate() {
        see(
            *got,
            *want,
            b.value * (1.0 + want.abs()) + b.per_logit * zmax[r],
        );
    }
    for (r, (got, want)) in host(fwd.entropy.as_ref().unwrap())
        .iter()
        .zip(&want.entropy)
        .enumerate()
    {
        let bound = (b.value * (1.0 + want.abs()) + b.per_logit * zmax[r]) * (1.0 + want.abs());
        see(*got, *want, bound);
    }
    let a = Tensor::from_slice(&case.a)
        .to_kind(Kind::Float)
        .to_device(device);
    let c = case
        .c
        .as_ref()
        .map(|c| Tensor::from_slice(c).to_kind(Kind::Float).to_device(device));
    let grads = fused_head::backward(&t, math, &fwd, &a, c.as_ref(), true).unwrap();
    let want = reference::backward(&rounded, &case.a, case.c.as_deref());
    // The magnitudes that form each gradient entry.
    let g: Vec<Vec<f64>> = (0..x.n)
        .map(|r| {
            let cr = case.c.as_ref().map_or(0.0, |c| c[r]);
            reference::logits_grad(&rounded.logits(r), x.targets[r], case.a[r], cr)
                .iter()
                .map(|g| g.abs() / x.temperature)
                .collect()
        })
        .collect();
    let zall = zmax.iter().fold(0.0f64, |m, &z| m.max(z));
    let rel = b.grad + 4.0 * b.per_logit * zall;
    let floor = 1e-30;
    for (i, (got, want)) in host(&grads.hidden).iter().zip(&want.hidden).enumerate() {
        let (r, k) = (i / x.h, i % x.h);
        let scale: f64 = (0..x.v)
            .map(|u| g[r][u] * rounded.weight[u * x.h + k].abs())
            .sum();
        see(*got, *want, rel * scale + floor);
    }
    for (i, (got, want)) in host(grads.weight.as_ref().unwrap())
        .iter()
        .zip(&want.weight)
        .enumerate()
    {
        let (u, k) = (i / x.h, i % x.h);
        let scale: f64 = (0..x.n)
            .map(|r| g[r][u] * rounded.hidden[r * x.h + k].abs())
            .sum();
        see(*got, *want, rel * scale + floor);
    }
    assert_eq!(grads.bias.is_some(), want.bias.is_some());
    if let (Some(got), Some(want)) = (grads.bias.as_ref(), want.bias.as_ref()) {
        for (u, (got, want)) in host(got).iter().zip(want).enumerate() {
            let scale: f64 = (0..x.n).map(|r| g[r][u]).sum();
            see(*got, *want, rel * scale + floor);
        }
    }
    worst
}
