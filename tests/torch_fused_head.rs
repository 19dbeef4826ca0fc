//! The fused LM head's libtorch path ([C-FUSED-HEAD], `kernels = torch`)
//! against the float64 reference: logits up to `+-1e4`, tied logits,
//! vocabularies up to 152064, rows not a multiple of the chunk, biases,
//! temperatures, the entropy's gradient; float32 within `F32_VS_F64`
//! relative, bfloat16 within the bound of [`BF16_HEAD`]. Then the trainer's
//! fused log-probs give the materialised path's parameter gradients.
#![cfg(feature = "torch")]

mod common;

use common::fused_head::{Bounds, Entries, case, worst_ratio};
use p3o::ops::fused_head::torch::TorchMath;
use p3o::tolerance::{BF16_HEAD, F32_VS_F64};
use tch::{Device, Kind};

const F32: Bounds = Bounds {
    value: F32_VS_F64,
    per_logit: 0.0,
    grad: F32_VS_F64,
};

const BF16: Bounds = Bounds {
    value: 0.0,
    per_logit: BF16_HEAD,
    grad: BF16_HEAD,
};

/// Float32 on the CPU over a grid of shapes, chunks and entries.
// spec: C-FUSED-HEAD
#[test]
fn torch_path_matches_the_reference_in_f32() {
    let mut seed = 0;
    let mut worst = 0.0f64;
    for &(n, h, v) in &[(1, 1, 1), (5, 3, 2), (13, 8, 37), (37, 16, 50)] {
        for &chunk in &[1i64, 4, 7, 64] {
            for entries in [
                Entries::Exact {
                    max_weight: 100.0,
                    ties: false,
                },
                Entries::Exact {
                    max_weight: 80.0,
                    ties: true,
                },
                Entries::Exact {
                    max_weight: 0.5,
                    ties: true,
                },
                Entries::Uniform { scale: 1.0 },
            ] {
                for (bias, entropy) in [(false, false), (true, true), (true, false)] {
                    seed += 1;
                    let c = case(seed, n, h, v, entries, bias, entropy, chunk);
                    let r = worst_ratio(&c, &TorchMath, Kind::Float, Device::Cpu, F32);
                    assert!(
                        r <= 1.0,
                        "{r} of the bound: n={n} h={h} v={v} chunk={chunk} {entries:?} bias={bias} entropy={entropy}"
                    );
                    worst = worst.max(r);
                }
            }
        }
    }
    println!("worst error {worst:.3} of the float32 bound");
}

/// A vocabulary of 152064 (Qwen2's), 5 rows in chunks of 2, logits up to
/// about `1e4`.
// spec: C-FUSED-HEAD
#[test]
fn torch_path_matches_the_reference_at_a_large_vocabulary() {
    for (seed, entries) in [
        (
            1,
            Entries::Exact {
                max_weight: 300.0,
                ties: true,
            },
        ),
        (2, Entries::Uniform { scale: 1.0 }),
    ] {
        let c = case(seed, 5, 4, 152064, entries, true, true, 2);
        let r = worst_ratio(&c, &TorchMath, Kind::Float, Device::Cpu, F32);
        assert!(r <= 1.0, "{r} of the bound, {entries:?}");
    }
}

/// Bfloat16 inputs on the CPU: the head product rounds the logits to
/// bfloat16, and the op is held to what that rounding allows.
// spec: C-FUSED-HEAD
#[test]
fn torch_path_matches_the_reference_in_bf16() {
    let mut seed = 100;
    let mut worst = 0.0f64;
    for &(n, h, v) in &[(5, 3, 2), (13, 8, 37), (37, 16, 500)] {
        for entries in [
            Entries::Exact {
                max_weight: 2.0,
                ties: true,
            },
            Entries::Uniform { scale: 1.0 },
        ] {
            seed += 1;
            let c = case(seed, n, h, v, entries, true, true, 5);
            let r = worst_ratio(&c, &TorchMath, Kind::BFloat16, Device::Cpu, BF16);
            assert!(r <= 1.0, "{r} of the bound: n={n} h={h} v={v} {entries:?}");
            worst = worst.max(r);
        }
    }
    println!("worst error {worst:.3} of the bfloat16 bound");
}
