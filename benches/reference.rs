//! Exact (enumerated) and sampled gradients of the float64 reference at
//! X = 64 contexts, K = 256 actions, 10^4 sampled pairs.

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::Array2;
use p3o::reference::policy::probabilities;
use p3o::reference::{Algorithm, Batch, Hyper, Problem, evaluate, sample_pairs};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

const X: usize = 64;
const K: usize = 256;
const PAIRS: usize = 10_000;

fn problem() -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut table =
        |scale: f64| Array2::from_shape_fn((X, K), |_| scale * (2.0 * rng.random::<f64>() - 1.0));
    let logits = table(1.0);
    let logits_old = &logits + &table(0.3);
    Problem {
        logits,
        logits_old,
        logits_ref: table(1.0),
        rewards: table(2.0),
        value: Some(ndarray::Array1::zeros(X)),
    }
}

fn bench(c: &mut Criterion) {
    let p = problem();
    let h = Hyper {
        beta: 0.1,
        ..Hyper::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let probs_old = probabilities(p.logits_old.view());
    let sampled = Batch::Sampled(sample_pairs(
        &probs_old,
        PAIRS,
        |i, _: &mut ChaCha8Rng| i % X,
        &mut rng,
    ));

    let mut group = c.benchmark_group("reference");
    group.sample_size(10);
    for alg in [
        Algorithm::P3oV1,
        Algorithm::P3oV2,
        Algorithm::Ppo,
        Algorithm::Dpo,
    ] {
        let p = Problem {
            value: alg.uses_value().then(|| p.value.clone().unwrap()),
            ..p.clone()
        };
        group.bench_function(format!("exact/{alg}/X{X}xK{K}"), |b| {
            b.iter(|| black_box(evaluate(alg, &h, &p, &Batch::Exact)))
        });
        group.bench_function(format!("sampled/{alg}/{PAIRS}pairs"), |b| {
            b.iter(|| black_box(evaluate(alg, &h, &p, &sampled)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
