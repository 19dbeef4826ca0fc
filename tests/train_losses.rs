//! The tch training losses against the float64 reference: loss and gradient
//! with respect to the sequence log-probs, on random pairs where clipping is
//! active, in float64 and float32.
#![cfg(feature = "torch")]

mod common;

use common::*;
use p3o::reference::{Algorithm, Hyper, PairConsts, PairVars, pair_loss};
use p3o::tolerance::F32_VS_F64;
use p3o::train::losses::{PairBatch, pair_loss as tch_pair_loss};
use proptest::prelude::*;
use tch::{Kind, Tensor};

/// Loss and `d loss / d lp_i` per pair from tch, in `kind`.
fn tch_eval(
    alg: Algorithm,
    h: &Hyper,
    pairs: &[(PairConsts, PairVars)],
    kind: Kind,
) -> (f64, Vec<[f64; 2]>) {
    let col = |f: &dyn Fn(&(PairConsts, PairVars)) -> f64| {
        Tensor::from_slice(&pairs.iter().map(f).collect::<Vec<f64>>())
    };
    let lp = [0, 1].map(|i| col(&|p| p.1.lp[i]).to_kind(kind).set_requires_grad(true));
    let lp_old = [0, 1].map(|i| col(&|p| p.0.lp_old[i]).to_kind(kind));
    let lp_ref = [0, 1].map(|i| col(&|p| p.0.lp_ref[i]).to_kind(kind));
    let reward = [0, 1].map(|i| col(&|p| p.0.reward[i]));
    let batch = PairBatch {
        lp: [&lp[0], &lp[1]],
        lp_old: [&lp_old[0], &lp_old[1]],
        lp_ref: [&lp_ref[0], &lp_ref[1]],
        reward: [&reward[0], &reward[1]],
    };
    let loss = tch_pair_loss(alg, h, &batch).unwrap();
    loss.backward();
    let g = lp.map(|t| Vec::<f64>::try_from(&t.grad().to_kind(Kind::Double)).unwrap());
    (
        loss.double_value(&[]),
        (0..pairs.len()).map(|n| [g[0][n], g[1][n]]).collect(),
    )
}

/// The inputs as `kind` would hold them (so that float32 rounding of the
/// inputs is not counted as kernel error).
fn rounded(pairs: &[(PairConsts, PairVars)], kind: Kind) -> Vec<(PairConsts, PairVars)> {
    let r = |v: f64| {
        if kind == Kind::Float {
            v as f32 as f64
        } else {
            v
        }
    };
    pairs
        .iter()
        .map(|(c, v)| {
            (
                PairConsts {
                    reward: c.reward,
                    lp_old: c.lp_old.map(r),
                    lp_ref: c.lp_ref.map(r),
                },
                PairVars {
                    lp: v.lp.map(r),
                    value: v.value,
                },
            )
        })
        .collect()
}

fn check(
    alg: Algorithm,
    h: &Hyper,
    pairs: &[(PairConsts, PairVars)],
    kind: Kind,
    tol: f64,
) -> Result<(), TestCaseError> {
    let pairs = rounded(pairs, kind);
    prop_assume!(
        pairs
            .iter()
            .all(|(c, v)| !near_kink(alg, h, v.lp, c.lp_old))
    );
    let n = pairs.len() as f64;
    let want: Vec<_> = pairs
        .iter()
        .map(|(c, v)| pair_loss(alg, h, c, *v))
        .collect();
    let want_loss = want.iter().map(|o| o.loss).sum::<f64>() / n;
    let (loss, grads) = tch_eval(alg, h, &pairs, kind);
    prop_assert!(
        (loss - want_loss).abs() <= tol * want_loss.abs().max(1.0),
        "{alg} loss {loss} vs {want_loss}"
    );
    for (k, (g, w)) in grads.iter().zip(&want).enumerate() {
        for (i, (&g, &w)) in g.iter().zip(&w.grad.lp).enumerate() {
            let w = w / n;
            prop_assert!(
                (g - w).abs() <= tol * w.abs().max(1.0 / n),
                "{alg} pair {k} d/dlp{}: {g} vs {w}",
                i + 1
            );
        }
    }
    Ok(())
}

fn pairs() -> impl Strategy<Value = Vec<(PairConsts, PairVars)>> {
    prop::collection::vec(pair_point(), 1..=12)
}

proptest! {
    #![proptest_config(config("tests/proptest-regressions/train_losses.txt"))]

    // spec: C-P3O-V1 C-P3O-V2 C-DPO C-PPG C-VPG C-CLIP C-SHAPED-REWARD
    #[test]
    fn tch_pair_losses_match_reference_f64(p in pairs(), h in hyper(), unclipped in any::<bool>()) {
        let h = if unclipped { Hyper { epsilon: f64::INFINITY, ..h } } else { h };
        for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo, Algorithm::Ppg, Algorithm::Vpg] {
            check(alg, &h, &p, Kind::Double, 1e-12)?;
        }
    }

    // spec: C-P3O-V1 C-P3O-V2 C-DPO
    #[test]
    fn tch_pair_losses_match_reference_f32(p in pairs(), h in hyper()) {
        for alg in [Algorithm::P3oV1, Algorithm::P3oV2, Algorithm::Dpo] {
            check(alg, &h, &p, Kind::Float, F32_VS_F64)?;
        }
    }
}

/// The strategy puts clipping to work: a fixed draw has clipped pairs.
#[test]
fn clipping_is_exercised() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let h = Hyper::default();
    let mut clipped = 0;
    for _ in 0..200 {
        let (c, v) =
            proptest::strategy::ValueTree::current(&pair_point().new_tree(&mut runner).unwrap());
        let out = pair_loss(Algorithm::P3oV1, &h, &c, v);
        clipped += usize::from(out.grad.lp.contains(&0.0));
    }
    assert!(clipped > 40, "only {clipped} of 200 pairs clipped");
}

mod ppo {
    use super::*;
    use p3o::reference::ppo_tokens::{PpoHyper, PpoToken, ppo_token_loss};
    use p3o::train::losses::{PpoBatch, ppo_loss};

    fn token() -> impl Strategy<Value = (PpoToken, f64, f64)> {
        (
            -6.0..=0.0f64,
            -1.0..=1.0f64,
            -3.0..=3.0f64,
            -3.0..=3.0f64,
            -3.0..=3.0f64,
            -1.0..=1.0f64,
            any::<bool>(),
        )
            .prop_map(|(lp_old, step, v_old, adv, ret, v_step, valid)| {
                (
                    PpoToken {
                        lp_old,
                        value_old: v_old,
                        advantage: adv,
                        ret,
                        mask: f64::from(u8::from(valid)),
                    },
                    lp_old + step,
                    v_old + v_step,
                )
            })
    }

    /// Away from the kinks of either clip.
    fn clear_of_kinks(t: &PpoToken, lp: f64, v: f64, h: &PpoHyper) -> bool {
        let rho = (lp - t.lp_old).exp();
        let far = |x: f64, e: f64| (x - e).abs() > 1e-3;
        far(rho, 1.0 - h.epsilon)
            && far(rho, 1.0 + h.epsilon)
            && far(v, t.value_old - h.value_clip)
            && far(v, t.value_old + h.value_clip)
    }

    proptest! {
        #![proptest_config(config("tests/proptest-regressions/train_losses_ppo.txt"))]

        /// Loss and gradients with respect to token log-probs and values
        /// equal the float64 reference, in float64.
        // spec: C-PPO-TOKEN C-CLIP
        #[test]
        fn tch_ppo_loss_matches_reference(tokens in prop::collection::vec(token(), 1..=16), eps in 0.05..=0.5f64, vf in 0.0..=2.0f64, vclip in 0.05..=1.0f64) {
            let h = PpoHyper { epsilon: eps, vf_coef: vf, value_clip: vclip };
            prop_assume!(tokens.iter().all(|(t, lp, v)| clear_of_kinks(t, *lp, *v, &h)));
            let toks: Vec<PpoToken> = tokens.iter().map(|x| x.0).collect();
            let lp: Vec<f64> = tokens.iter().map(|x| x.1).collect();
            let v: Vec<f64> = tokens.iter().map(|x| x.2).collect();
            let (want, g_lp, g_v) = ppo_token_loss(&toks, &lp, &v, &h);
            let row = |f: &dyn Fn(&PpoToken) -> f64| Tensor::from_slice(&toks.iter().map(f).collect::<Vec<f64>>()).unsqueeze(0);
            let lp_t = Tensor::from_slice(&lp).unsqueeze(0).set_requires_grad(true);
            let v_t = Tensor::from_slice(&v).unsqueeze(0).set_requires_grad(true);
            let (lp_old, v_old, adv, ret, mask) = (row(&|t| t.lp_old), row(&|t| t.value_old), row(&|t| t.advantage), row(&|t| t.ret), row(&|t| t.mask));
            let b = PpoBatch { lp: &lp_t, value: &v_t, lp_old: &lp_old, value_old: &v_old, advantage: &adv, ret: &ret, mask: &mask };
            let loss = ppo_loss(&b, &h).to_kind(Kind::Double);
            loss.backward();
            prop_assert!((loss.double_value(&[]) - want).abs() <= 1e-12 * want.abs().max(1.0), "loss {} vs {want}", loss.double_value(&[]));
            let got_lp = Vec::<f64>::try_from(&lp_t.grad().squeeze_dim(0)).unwrap();
            let got_v = Vec::<f64>::try_from(&v_t.grad().squeeze_dim(0)).unwrap();
            for i in 0..toks.len() {
                prop_assert!((got_lp[i] - g_lp[i]).abs() <= 1e-12, "d/dlp[{i}] {} vs {}", got_lp[i], g_lp[i]);
                prop_assert!((got_v[i] - g_v[i]).abs() <= 1e-12, "d/dV[{i}] {} vs {}", got_v[i], g_v[i]);
            }
        }
    }
}

/// The two-phase backward ([`p3o::train::kernels`]) chains log-probs
/// computed outside autograd back into the model: with the float64 reference
/// as the outside code, every parameter gradient (and a value head's) equals
/// libtorch autograd's, for a loss that also depends on values directly.
// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB
#[test]
fn outside_logprobs_chain_into_autograd() {
    use p3o::torch::nn::Linear;
    use p3o::train::builtin::tiny_model;
    use p3o::train::kernels::{Kernels, backward};
    use p3o::train::scoring::{ValueHead, token_window_with};
    use tch::Device;

    let model = tiny_model(3, Device::Cpu).unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = ValueHead {
        linear: Linear::new(vs.root() / "v_head", model.config.hidden_size(), 1, true).unwrap(),
        vs,
    };
    tch::no_grad(|| {
        let mut w = head.linear.weight.shallow_clone();
        w.copy_(&(Tensor::arange(64, (Kind::Float, Device::Cpu)).view([1, 64]) / 640.0 - 0.05));
    });
    // Ragged responses, so that the window has masked positions.
    let prompts: Vec<Vec<i64>> = vec![vec![5, 9, 12], vec![7], vec![30, 31]];
    let responses: Vec<Vec<i64>> = vec![vec![40, 41, 42, 0], vec![50], vec![60, 61]];
    let weights = Tensor::from_slice(&[0.7f32, -1.3, 0.4]);
    let grads = |kernels: Kernels| -> (Vec<f64>, Vec<Vec<f64>>) {
        for (_, mut p) in model.vs.variables().into_iter().chain(head.vs.variables()) {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
            let _ = p.requires_grad_(true);
        }
        let (w, detached) =
            token_window_with(&model, Some(&head), &prompts, &responses, &kernels).unwrap();
        let seq = w.lp.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        let values = w.values.unwrap();
        // A loss of log-probs and values together, like PPO's.
        let loss = (&seq * &weights).sum(Kind::Float)
            + (values.square() * &w.mask).sum(Kind::Float) * 0.5
            + (&seq
                * values
                    .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
                    .detach())
            .sum(Kind::Float)
                * 0.1;
        backward(&loss, detached.as_ref()).unwrap();
        let mut named: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .chain(head.vs.variables())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let lp = Vec::<f64>::try_from(&seq.detach().to_kind(Kind::Double)).unwrap();
        let g = named
            .iter()
            .map(|(_, p)| {
                Vec::<f64>::try_from(&p.grad().to_kind(Kind::Double).reshape([-1])).unwrap()
            })
            .collect();
        (lp, g)
    };
    let (lp_t, g_t) = grads(Kernels::Torch);
    let (lp_r, g_r) = grads(Kernels::Reference);
    for (a, b) in lp_t.iter().zip(&lp_r) {
        assert!((a - b).abs() <= F32_VS_F64 * a.abs().max(1.0), "{a} vs {b}");
    }
    let scale = g_t.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    let diff = g_t
        .iter()
        .flatten()
        .zip(g_r.iter().flatten())
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "max gradient difference {diff} (scale {scale})"
    );
}
