//! The float64 twin of the fused LM head ([C-FUSED-HEAD]) against its
//! definition: log-probs and entropies of the materialised logits, a
//! per-row shift of the logits (a common bias) changes nothing, and the
//! backward matches finite differences of `sum a logp + c H`.

mod common;

use common::config;
use p3o::ops::fused_head::reference::{HeadInputs, backward, forward};
use p3o::reference::tokens::token_logprob;
use p3o::tolerance::{F64_IDENTITY, FD_STEP, FINITE_DIFFERENCE, close};
use proptest::prelude::*;

/// Small heads with entries in `+-2`, a bias or none, temperature in
/// `[0.5, 2]`, and upstream gradients in `+-2`.
fn case() -> impl Strategy<Value = (HeadInputs, Vec<f64>, Vec<f64>)> {
    (
        1usize..=4,
        1usize..=5,
        1usize..=7,
        any::<bool>(),
        0.5..=2.0f64,
    )
        .prop_flat_map(|(n, h, v, has_bias, temperature)| {
            (
                prop::collection::vec(-2.0..=2.0f64, n * h),
                prop::collection::vec(-2.0..=2.0f64, v * h),
                prop::collection::vec(-2.0..=2.0f64, v),
                prop::collection::vec(0..v, n),
                prop::collection::vec(-2.0..=2.0f64, n),
                prop::collection::vec(-2.0..=2.0f64, n),
            )
                .prop_map(move |(hidden, weight, bias, targets, a, c)| {
                    let x = HeadInputs {
                        n,
                        h,
                        v,
                        hidden,
                        weight,
                        bias: has_bias.then_some(bias),
                        targets,
                        temperature,
                    };
                    (x, a, c)
                })
        })
}

/// `sum_n a_n logp_n + c_n H_n`.
fn objective(x: &HeadInputs, a: &[f64], c: &[f64]) -> f64 {
    let out = forward(x);
    (0..x.n)
        .map(|r| a[r] * out.logp[r] + c[r] * out.entropy[r])
        .sum()
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/fused_head.txt"))]

    /// `logp` is the materialised row's log-softmax at the target, the
    /// entropy is `-sum p log p` in `[0, ln V]`, and adding one constant to
    /// every bias (a per-row shift of the logits) changes neither.
    // spec: C-FUSED-HEAD
    #[test]
    fn forward_is_the_materialised_log_softmax((x, _a, _c) in case(), shift in -50.0..=50.0f64) {
        let out = forward(&x);
        for r in 0..x.n {
            let z = x.logits(r);
            prop_assert!(close(out.logp[r], token_logprob(&z, x.targets[r]).0, F64_IDENTITY));
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            let naive: f64 = -z.iter().map(|v| (v - lse).exp() * (v - lse)).sum::<f64>();
            prop_assert!(close(out.entropy[r], naive, F64_IDENTITY));
            prop_assert!(out.entropy[r] >= -F64_IDENTITY);
            prop_assert!(out.entropy[r] <= (x.v as f64).ln() + F64_IDENTITY);
        }
        let mut shifted = x.clone();
        shifted.bias = Some(
            (0..x.v)
                .map(|v| x.bias.as_ref().map_or(0.0, |b| b[v]) + shift * x.temperature)
                .collect(),
        );
        let moved = forward(&shifted);
        for r in 0..x.n {
            prop_assert!(close(moved.logp[r], out.logp[r], 1e-9));
            prop_assert!(close(moved.entropy[r], out.entropy[r], 1e-9));
        }
    }

    /// The gradients of `hidden`, `weight` and `bias` match central finite
    /// differences of `sum a logp + c H`, with and without the entropy's
    /// upstream gradient.
    // spec: C-FUSED-HEAD
    #[test]
    fn backward_matches_finite_differences((x, a, c) in case(), with_entropy in any::<bool>()) {
        let c = if with_entropy { c } else { vec![0.0; x.n] };
        let grads = backward(&x, &a, with_entropy.then_some(c.as_slice()));
        let fd = |edit: &dyn Fn(&mut HeadInputs, f64)| {
            let at = |d: f64| {
                let mut y = x.clone();
                edit(&mut y, d);
                objective(&y, &a, &c)
            };
            (at(FD_STEP) - at(-FD_STEP)) / (2.0 * FD_STEP)
        };
        for i in 0..x.hidden.len() {
            let want = fd(&|y, d| y.hidden[i] += d);
            prop_assert!(close(want, grads.hidden[i], FINITE_DIFFERENCE), "hidden {i}: {want} vs {}", grads.hidden[i]);
        }
        for i in 0..x.weight.len() {
            let want = fd(&|y, d| y.weight[i] += d);
            prop_assert!(close(want, grads.weight[i], FINITE_DIFFERENCE), "weight {i}: {want} vs {}", grads.weight[i]);
        }
        prop_assert_eq!(grads.bias.is_some(), x.bias.is_some());
        if let Some(b) = &grads.bias {
            for (i, &got) in b.iter().enumerate() {
                let want = fd(&|y, d| y.bias.as_mut().unwrap()[i] += d);
                prop_assert!(close(want, got, FINITE_DIFFERENCE), "bias {i}: {want} vs {got}");
            }
        }
    }
}
