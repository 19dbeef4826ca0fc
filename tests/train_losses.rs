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
/// computed outside autograd back into the model: the float64 reference on
/// materialised logits, the fused head ([C-FUSED-HEAD], in one chunk and
/// in chunks of 2) and libtorch autograd on materialised logits give the
/// same log-probs, entropies and parameter gradients (a value head's too),
/// for a loss that also depends on values directly.
// spec: C-TOKEN-LOGPROB C-SEQ-LOGPROB C-FUSED-HEAD
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
    let grads = |kernels: Kernels| -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>) {
        for (_, mut p) in model.vs.variables().into_iter().chain(head.vs.variables()) {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
            let _ = p.requires_grad_(true);
        }
        // Without gradient: no leaf to chain, no entropy.
        let (w, detached) =
            tch::no_grad(|| token_window_with(&model, None, &prompts, &responses, &kernels))
                .unwrap();
        assert!(
            detached.is_none() && w.entropy.is_none(),
            "{} {}",
            detached.is_none(),
            w.entropy.is_none()
        );
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
        let entropy =
            Vec::<f64>::try_from(&w.entropy.unwrap().to_kind(Kind::Double).reshape([-1])).unwrap();
        let g = named
            .iter()
            .map(|(_, p)| {
                Vec::<f64>::try_from(&p.grad().to_kind(Kind::Double).reshape([-1])).unwrap()
            })
            .collect();
        (lp, g, entropy)
    };
    let (lp_r, g_r, h_r) = grads(Kernels::REFERENCE);
    for (label, kernels) in [
        ("torch", Kernels::TORCH),
        ("torch, head chunks of 2", Kernels::TORCH.with_head_chunk(2)),
        ("materialised", Kernels::MATERIALISED),
    ] {
        let (lp_t, g_t, h_t) = grads(kernels);
        for (a, b) in lp_t.iter().zip(&lp_r) {
            assert!(
                (a - b).abs() <= F32_VS_F64 * a.abs().max(1.0),
                "{label}: {a} vs {b}"
            );
        }
        for (a, b) in h_t.iter().zip(&h_r) {
            assert!(
                (a - b).abs() <= F32_VS_F64 * a.abs().max(1.0),
                "{label} entropy: {a} vs {b}"
            );
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
            "{label}: max gradient difference {diff} (scale {scale})"
        );
    }
}

/// Group losses ([C-GROUP]) over `[P, G]` batches and p3o-trlx's token
/// level against the float64 reference.
mod groups {
    use super::*;
    use p3o::reference::ScaleRewards;
    use p3o::reference::group::{GroupVars, group_surrogate};
    use p3o::reference::group_losses::GroupConsts;
    use p3o::reference::trlx_tokens::{TokenGroup, TrlxOptions, p3o_trlx_tokens};
    use p3o::train::losses::{GroupBatch, TokenGroupBatch, group_loss, p3o_trlx_token_loss};

    /// A group's constants and its current `lp`: rewards in [-5, 5] (all
    /// equal when `tied`), log-probs in [-6, 0], `lp` within 1 of `lp_old`.
    type Point = (GroupConsts, Vec<f64>);

    fn batches() -> impl Strategy<Value = Vec<Point>> {
        (2..=5usize, 1..=6usize).prop_flat_map(|(g, p)| {
            let group = (
                prop::collection::vec(-5.0..=5.0f64, g),
                prop::collection::vec(-6.0..=0.0f64, g),
                prop::collection::vec(-6.0..=0.0f64, g),
                prop::collection::vec(-1.0..=1.0f64, g),
                prop::bool::weighted(0.15),
            )
                .prop_map(|(mut reward, lp_old, lp_ref, step, tied)| {
                    if tied {
                        reward = vec![reward[0]; reward.len()];
                    }
                    let lp = lp_old.iter().zip(&step).map(|(a, s)| a + s).collect();
                    (
                        GroupConsts {
                            reward,
                            lp_old,
                            lp_ref,
                        },
                        lp,
                    )
                });
            prop::collection::vec(group, p)
        })
    }

    /// GRPO's and p3o-trlx's settings on top of [`hyper`]: either scaling,
    /// `std_eps` in [0, 1] or 0, `cliprange_ratio` in [1.5, 10] or `inf`.
    fn group_hyper() -> impl Strategy<Value = Hyper> {
        (
            hyper(),
            prop::sample::select(ScaleRewards::ALL.to_vec()),
            prop_oneof![Just(0.0), 0.0..=1.0f64],
            prop_oneof![Just(f64::INFINITY), 1.5..=10.0f64],
        )
            .prop_map(|(h, scale_rewards, std_eps, cliprange_ratio)| Hyper {
                scale_rewards,
                std_eps,
                cliprange_ratio,
                ..h
            })
    }

    fn rounded(points: &[Point], kind: Kind) -> Vec<Point> {
        let r = |v: &Vec<f64>| -> Vec<f64> {
            v.iter()
                .map(|&x| {
                    if kind == Kind::Float {
                        x as f32 as f64
                    } else {
                        x
                    }
                })
                .collect()
        };
        points
            .iter()
            .map(|(c, lp)| {
                (
                    GroupConsts {
                        reward: c.reward.clone(),
                        lp_old: r(&c.lp_old),
                        lp_ref: r(&c.lp_ref),
                    },
                    r(lp),
                )
            })
            .collect()
    }

    /// Whether any pair of the group sits within the kink margin of a clip,
    /// or its joint ratio at p3o-trlx's bound.
    fn group_near_kink(alg: Algorithm, h: &Hyper, (c, lp): &Point) -> bool {
        let g = lp.len();
        (0..g).any(|i| {
            (i + 1..g).any(|j| {
                let joint = (lp[i] - c.lp_old[i] + lp[j] - c.lp_old[j]).exp();
                let at_bound = |b: f64| (joint - b).abs() < 1e-3 * b;
                near_kink(alg, h, [lp[i], lp[j]], [c.lp_old[i], c.lp_old[j]])
                    || (alg == Algorithm::P3oTrlx
                        && (at_bound(h.cliprange_ratio) || at_bound(1.0 / h.cliprange_ratio)))
            })
        })
    }

    fn check_groups(
        alg: Algorithm,
        h: &Hyper,
        points: &[Point],
        kind: Kind,
        tol: f64,
    ) -> Result<(), TestCaseError> {
        let points = rounded(points, kind);
        prop_assume!(!points.iter().any(|p| group_near_kink(alg, h, p)));
        let (p, g) = (points.len(), points[0].1.len());
        let want: Vec<_> = points
            .iter()
            .map(|(c, lp)| {
                let at = GroupVars { lp, value: 0.0 };
                group_surrogate(alg, h, c, at, at)
            })
            .collect();
        let want_loss = want.iter().map(|o| o.loss).sum::<f64>() / p as f64;
        let table = |f: &dyn Fn(&Point) -> &Vec<f64>| {
            let flat: Vec<f64> = points.iter().flat_map(|pt| f(pt).clone()).collect();
            Tensor::from_slice(&flat).view([p as i64, g as i64])
        };
        let lp = table(&|pt| &pt.1).to_kind(kind).set_requires_grad(true);
        let (lp_old, lp_ref) = (
            table(&|pt| &pt.0.lp_old).to_kind(kind),
            table(&|pt| &pt.0.lp_ref).to_kind(kind),
        );
        let reward = table(&|pt| &pt.0.reward);
        let loss = group_loss(
            alg,
            h,
            &GroupBatch {
                lp: &lp,
                lp_old: &lp_old,
                lp_ref: &lp_ref,
                reward: &reward,
            },
        )
        .unwrap();
        loss.backward();
        let got = loss.double_value(&[]);
        prop_assert!(
            (got - want_loss).abs() <= tol * want_loss.abs().max(1.0),
            "{alg} G={g}: loss {got} vs {want_loss}"
        );
        let grads = Vec::<f64>::try_from(&lp.grad().to_kind(Kind::Double).view([-1])).unwrap();
        for (k, w) in want.iter().enumerate() {
            for i in 0..g {
                let (got, w) = (grads[k * g + i], w.grad_lp[i] / p as f64);
                prop_assert!(
                    (got - w).abs() <= tol * w.abs().max(1.0 / p as f64),
                    "{alg} G={g} group {k} d/dlp{i}: {got} vs {w}"
                );
            }
        }
        Ok(())
    }

    /// Every group algorithm but PPO.
    const ALGORITHMS: [Algorithm; 8] = [
        Algorithm::Vpg,
        Algorithm::Ppg,
        Algorithm::P3oV1,
        Algorithm::P3oV2,
        Algorithm::Dpo,
        Algorithm::Rloo,
        Algorithm::Grpo,
        Algorithm::P3oTrlx,
    ];

    /// A group of token sequences (1-5 tokens each, token log-probs in
    /// [-3, 0], the current ones within 0.5) for p3o-trlx's token level.
    type TokenPoint = (TokenGroup, Vec<Vec<f64>>);

    fn token_batches() -> impl Strategy<Value = Vec<TokenPoint>> {
        (2..=4usize, 1..=4usize).prop_flat_map(|(g, p)| {
            let response = prop::collection::vec((-3.0..=0.0f64, -0.5..=0.5f64), 1..=5);
            let group = (
                prop::collection::vec(-5.0..=5.0f64, g),
                prop::collection::vec(-12.0..=0.0f64, g),
                prop::collection::vec(response, g),
            )
                .prop_map(|(reward, lp_ref, tokens)| {
                    let lp_old = tokens
                        .iter()
                        .map(|r| r.iter().map(|t| t.0).collect())
                        .collect();
                    let lp = tokens
                        .iter()
                        .map(|r| r.iter().map(|t| t.0 + t.1).collect())
                        .collect();
                    (
                        TokenGroup {
                            reward,
                            lp_ref,
                            lp_old,
                        },
                        lp,
                    )
                });
            prop::collection::vec(group, p)
        })
    }

    /// Whether a token or a pair sits within the margin of a clip edge or
    /// the joint ratio at its bound.
    fn tokens_near_kink(h: &Hyper, o: TrlxOptions, (g, lp): &TokenPoint) -> bool {
        let near = |x: f64, edge: f64| (x - edge).abs() < 1e-3 * (1.0 + edge.abs());
        let sum = |v: &[f64]| v.iter().sum::<f64>();
        let seq: Vec<f64> = lp.iter().map(|r| sum(r)).collect();
        let old: Vec<f64> = g.lp_old.iter().map(|r| sum(r)).collect();
        let n = seq.len();
        let token_edge = lp.iter().zip(&g.lp_old).any(|(r, o_)| {
            r.iter()
                .zip(o_)
                .any(|(&x, &c)| near(x, c - h.epsilon) || near(x, c + h.epsilon))
        });
        let pair_edge = (0..n).any(|i| {
            (i + 1..n).any(|j| {
                let (d, d_old) = (seq[i] - seq[j], old[i] - old[j]);
                let joint = (seq[i] - old[i] + seq[j] - old[j]).exp();
                let c = h.cliprange_ratio;
                near(joint, c)
                    || near(joint, 1.0 / c)
                    || (!o.clip_tokenwise
                        && (near(d, d_old - h.epsilon) || near(d, d_old + h.epsilon)))
            })
        });
        pair_edge || (o.clip_tokenwise && token_edge)
    }

    /// The size of the terms that form a group's gradient entries: the
    /// clamped joint ratio times `1 + |r_i - r_j| + beta (|lr_i| + |lr_j|)`
    /// at its largest over pairs, `|lr_i|` bounded by the absolute token
    /// log-probs plus `|log pi_ref|`.
    fn token_magnitude(h: &Hyper, (g, lp): &TokenPoint) -> f64 {
        let abs_sum = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>();
        let lr: Vec<f64> = lp
            .iter()
            .zip(&g.lp_ref)
            .map(|(r, lp_ref)| abs_sum(r) + lp_ref.abs())
            .collect();
        let step: Vec<f64> = lp
            .iter()
            .zip(&g.lp_old)
            .map(|(r, o)| r.iter().zip(o).map(|(a, b)| a - b).sum::<f64>())
            .collect();
        let n = lr.len();
        (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| {
                let w = (step[i] + step[j])
                    .exp()
                    .clamp(1.0 / h.cliprange_ratio, h.cliprange_ratio);
                w * (1.0 + (g.reward[i] - g.reward[j]).abs() + h.beta * (lr[i] + lr[j]))
            })
            .fold(1.0, f64::max)
    }

    fn check_tokens(
        h: &Hyper,
        o: TrlxOptions,
        points: &[TokenPoint],
        kind: Kind,
        tol: f64,
    ) -> Result<(), TestCaseError> {
        let r = |x: f64| {
            if kind == Kind::Float {
                x as f32 as f64
            } else {
                x
            }
        };
        let points: Vec<TokenPoint> = points
            .iter()
            .map(|(g, lp)| {
                let rows = |v: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                    v.iter()
                        .map(|row| row.iter().map(|&x| r(x)).collect())
                        .collect()
                };
                (
                    TokenGroup {
                        reward: g.reward.clone(),
                        lp_ref: g.lp_ref.iter().map(|&x| r(x)).collect(),
                        lp_old: rows(&g.lp_old),
                    },
                    rows(lp),
                )
            })
            .collect();
        prop_assume!(!points.iter().any(|p| tokens_near_kink(h, o, p)));
        let groups: Vec<TokenGroup> = points.iter().map(|p| p.0.clone()).collect();
        let lp: Vec<Vec<Vec<f64>>> = points.iter().map(|p| p.1.clone()).collect();
        let want = p3o_trlx_tokens(h, o, &groups, &lp);
        // [P, G, L], right-aligned as the trainer's response windows are.
        let (p, g) = (groups.len(), groups[0].reward.len());
        let l = lp.iter().flatten().map(Vec::len).max().unwrap();
        let padded = |v: &[Vec<Vec<f64>>], fill_mask: bool| {
            let flat: Vec<f64> = v
                .iter()
                .flatten()
                .flat_map(|row| {
                    let mut out = vec![0.0; l - row.len()];
                    out.extend(row.iter().map(|&x| if fill_mask { 1.0 } else { x }));
                    out
                })
                .collect();
            Tensor::from_slice(&flat).view([p as i64, g as i64, l as i64])
        };
        let old_tokens: Vec<Vec<Vec<f64>>> = groups.iter().map(|g| g.lp_old.clone()).collect();
        let lp_t = padded(&lp, false).to_kind(kind).set_requires_grad(true);
        let (old_t, mask) = (
            padded(&old_tokens, false).to_kind(kind),
            padded(&lp, true).to_kind(kind),
        );
        let seq = |f: &dyn Fn(&TokenGroup) -> &Vec<f64>| {
            let flat: Vec<f64> = groups.iter().flat_map(|gr| f(gr).clone()).collect();
            Tensor::from_slice(&flat).view([p as i64, g as i64])
        };
        let (lp_ref, reward) = (seq(&|gr| &gr.lp_ref).to_kind(kind), seq(&|gr| &gr.reward));
        let loss = p3o_trlx_token_loss(
            h,
            o.clip_tokenwise,
            &TokenGroupBatch {
                lp: &(&lp_t * &mask),
                lp_old: &old_t,
                mask: &mask,
                lp_ref: &lp_ref,
                reward: &reward,
            },
        );
        loss.backward();
        let got = loss.double_value(&[]);
        // The loss averages pair terms that may cancel (over a group's
        // pairs, or with `avg_tokenwise` over its tokens, at most (G - 1) / 2
        // pair terms per token): its rounding error scales with the terms.
        let terms = points
            .iter()
            .map(|pt| token_magnitude(h, pt))
            .fold(1.0, f64::max)
            * ((g as f64 - 1.0) / 2.0).max(1.0);
        prop_assert!(
            (got - want.loss).abs() <= tol * want.loss.abs().max(terms),
            "{o:?}: loss {got} vs {} (terms up to {terms})",
            want.loss
        );
        let grad = Vec::<f64>::try_from(&lp_t.grad().to_kind(Kind::Double).view([-1])).unwrap();
        let scale = 1.0 / lp.iter().flatten().flatten().count() as f64;
        for (k, group) in want.grad.iter().enumerate() {
            // A gradient entry is `q w / N` summed over pairs, and `q` may
            // cancel: its rounding error scales with the terms that form
            // it, not with its value.
            let floor = scale * token_magnitude(h, &points[k]);
            for (m, row) in group.iter().enumerate() {
                for (t, &w) in row.iter().enumerate() {
                    let at = (k * g + m) * l + (l - row.len()) + t;
                    prop_assert!(
                        (grad[at] - w).abs() <= tol * w.abs().max(floor),
                        "{o:?} group {k} response {m} token {t}: {} vs {w}",
                        grad[at]
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config("tests/proptest-regressions/train_losses_groups.txt"))]

        /// Loss and `d loss / d lp_i` over `[P, G]` batches, `G` in 2..=5,
        /// with clipping active (and unclipped), in float64.
        // spec: C-GROUP C-TRAIN-GROUPS C-RLOO C-GRPO C-P3O-TRLX C-CLIP
        #[test]
        fn tch_group_losses_match_reference_f64(b in batches(), h in group_hyper(), unclipped in any::<bool>()) {
            let h = if unclipped { Hyper { epsilon: f64::INFINITY, ..h } } else { h };
            for alg in ALGORITHMS {
                check_groups(alg, &h, &b, Kind::Double, 1e-12)?;
            }
        }

        // spec: C-GROUP C-RLOO C-GRPO C-P3O-TRLX
        #[test]
        fn tch_group_losses_match_reference_f32(b in batches(), h in group_hyper()) {
            for alg in ALGORITHMS {
                check_groups(alg, &h, &b, Kind::Float, F32_VS_F64)?;
            }
        }

        /// p3o-trlx's `avg_tokenwise` and `clip_tokenwise` over ragged
        /// token sequences, in float64 and float32.
        // spec: C-P3O-TRLX C-CLIP
        #[test]
        fn tch_trlx_token_loss_matches_reference(b in token_batches(), h in group_hyper(), clip_tokenwise in any::<bool>()) {
            let o = TrlxOptions { clip_tokenwise, avg_tokenwise: true };
            check_tokens(&h, o, &b, Kind::Double, 1e-12)?;
            check_tokens(&h, o, &b, Kind::Float, F32_VS_F64)?;
        }
    }
}
