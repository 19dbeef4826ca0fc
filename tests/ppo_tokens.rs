//! The float64 PPO token loss ([C-PPO-TOKEN]) on its own, with no libtorch:
//! cases computed by hand (each branch of the policy and value clips, the
//! mean over valid tokens), and its gradients against finite differences
//! away from the clips' kinks.

mod common;

use p3o::reference::ppo_tokens::{PpoHyper, PpoToken, ppo_token_loss};
use p3o::tolerance::{F64_IDENTITY, FD_STEP, FINITE_DIFFERENCE, close};
use proptest::prelude::*;

const H: PpoHyper = PpoHyper {
    epsilon: 0.2,
    vf_coef: 0.3,
    value_clip: 0.2,
};

/// A valid token whose behaviour log-prob is `lp_old`.
fn token(lp_old: f64, advantage: f64, value_old: f64, ret: f64) -> PpoToken {
    PpoToken {
        lp_old,
        value_old,
        advantage,
        ret,
        mask: 1.0,
    }
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(close(got, want, F64_IDENTITY), "{what}: {got} != {want}");
}

/// One token at a time: (token, lp, value) -> (loss, d/dlp, d/dvalue).
fn one(t: PpoToken, lp: f64, v: f64) -> (f64, f64, f64) {
    let (loss, g_lp, g_v) = ppo_token_loss(&[t], &[lp], &[v], &H);
    assert_eq!((g_lp.len(), g_v.len()), (1, 1));
    (loss, g_lp[0], g_v[0])
}

// spec: C-PPO-TOKEN C-CLIP
#[test]
fn ppo_token_loss_by_hand() {
    let lp_old = 0.3;
    // rho = 1.1 inside the band, A = 2: -A rho, gradient -A rho. The value
    // 0.6 is inside its band around 0.5: 0.5 vf (v - R)^2 with R = 1.
    let (loss, g_lp, g_v) = one(token(lp_old, 2.0, 0.5, 1.0), lp_old + 1.1f64.ln(), 0.6);
    assert_close(loss, -2.2 + 0.5 * 0.3 * 0.16, "inside: loss");
    assert_close(g_lp, -2.2, "inside: d/dlp");
    assert_close(g_v, 0.3 * -0.4, "inside: d/dvalue");

    // rho = 1.5 above the band with A > 0: the clip wins, -A (1 + eps), no
    // gradient. The value 1.0 is outside its band around 0 (clipped to 0.2)
    // but the unclipped error is the larger: it counts, with its gradient.
    let (loss, g_lp, g_v) = one(token(lp_old, 2.0, 0.0, 0.5), lp_old + 1.5f64.ln(), 1.0);
    assert_close(loss, -2.4 + 0.5 * 0.3 * 0.25, "above: loss");
    assert_eq!(g_lp, 0.0, "above: the clip zeroes the gradient");
    assert_close(g_v, 0.3 * 0.5, "above: d/dvalue");

    // rho = 0.5 below the band with A < 0: the clip wins, -A (1 - eps), no
    // gradient. The value 0.5 is clipped to 0.2, whose error to R = 0.45
    // is the larger: it counts, and it is constant in the value.
    let (loss, g_lp, g_v) = one(token(lp_old, -1.0, 0.0, 0.45), lp_old + 0.5f64.ln(), 0.5);
    assert_close(loss, 0.8 + 0.5 * 0.3 * 0.0625, "below: loss");
    assert_eq!(g_lp, 0.0, "below: the clip zeroes the gradient");
    assert_eq!(g_v, 0.0, "below: the clipped value has no gradient");

    // rho = 1.5 above the band with A < 0: the unclipped term is the larger
    // and keeps its gradient; likewise rho = 0.5 with A > 0.
    let (loss, g_lp, _) = one(token(lp_old, -1.0, 0.0, 0.0), lp_old + 1.5f64.ln(), 0.0);
    assert_close(loss, 1.5, "above, A < 0: loss");
    assert_close(g_lp, 1.5, "above, A < 0: d/dlp");
    let (loss, g_lp, _) = one(token(lp_old, 2.0, 0.0, 0.0), lp_old + 0.5f64.ln(), 0.0);
    assert_close(loss, -1.0, "below, A > 0: loss");
    assert_close(g_lp, -1.0, "below, A > 0: d/dlp");
}

/// The loss is the mean over valid tokens: masked tokens add nothing and
/// get no gradient, and a window with no valid token has loss 0.
// spec: C-PPO-TOKEN
#[test]
fn ppo_token_loss_averages_over_valid_tokens() {
    let lp_old = -0.7;
    let a = token(lp_old, 2.0, 0.5, 1.0);
    let b = token(lp_old, -1.0, 0.0, 0.45);
    let lp = [lp_old + 1.1f64.ln(), lp_old + 0.2, lp_old + 0.5f64.ln()];
    let v = [0.6, 3.0, 0.5];
    let (la, ga, gva) = one(a, lp[0], v[0]);
    let (lb, gb, gvb) = one(b, lp[2], v[2]);
    let masked = PpoToken { mask: 0.0, ..a };
    let (loss, g_lp, g_v) = ppo_token_loss(&[a, masked, b], &lp, &v, &H);
    assert_close(loss, (la + lb) / 2.0, "loss");
    assert_eq!(g_lp.len(), 3);
    assert_close(g_lp[0], ga / 2.0, "d/dlp of the first token");
    assert_close(g_lp[2], gb / 2.0, "d/dlp of the last token");
    assert_close(g_v[0], gva / 2.0, "d/dvalue of the first token");
    assert_close(g_v[2], gvb / 2.0, "d/dvalue of the last token");
    assert_eq!((g_lp[1], g_v[1]), (0.0, 0.0), "the masked token");

    let none = PpoToken { mask: 0.0, ..b };
    let (loss, g_lp, g_v) = ppo_token_loss(&[none, none], &lp[..2], &v[..2], &H);
    assert_eq!(loss, 0.0);
    assert_eq!((g_lp, g_v), (vec![0.0; 2], vec![0.0; 2]));
}

/// Whether `rho`, or a value at `v`, lies within [`common::KINK_MARGIN`]
/// of a kink of the loss.
fn near_kinks(t: &PpoToken, lp: f64, v: f64) -> bool {
    let m = common::KINK_MARGIN;
    let rho = (lp - t.lp_old).exp();
    let band = [1.0 - H.epsilon, 1.0 + H.epsilon];
    let edges = [t.value_old - H.value_clip, t.value_old + H.value_clip];
    let vc = v.clamp(edges[0], edges[1]);
    band.iter().any(|b| (rho - b).abs() < m)
        || edges.iter().any(|e| (v - e).abs() < m)
        || ((v - t.ret).abs() - (vc - t.ret).abs()).abs() < m
}

fn ppo_tokens() -> impl Strategy<Value = Vec<(PpoToken, f64, f64)>> {
    let one = (
        -3.0..0.0f64,
        -0.6..0.6f64,
        -2.0..2.0f64,
        -1.0..1.0f64,
        -1.5..1.5f64,
        -1.5..1.5f64,
        prop::bool::weighted(0.8),
    )
        .prop_map(|(lp_old, dlp, a, value_old, dv, ret, valid)| {
            let t = PpoToken {
                lp_old,
                value_old,
                advantage: a,
                ret,
                mask: f64::from(u8::from(valid)),
            };
            (t, lp_old + dlp, value_old + dv)
        });
    prop::collection::vec(one, 1..6)
}

proptest! {
    #![proptest_config(common::config("tests/proptest-regressions/ppo_tokens.txt"))]

    /// Both gradients are the central finite differences of the loss.
    // spec: C-PPO-TOKEN C-CLIP
    #[test]
    fn ppo_token_gradients_match_finite_differences(rows in ppo_tokens()) {
        prop_assume!(!rows.iter().any(|(t, lp, v)| near_kinks(t, *lp, *v)));
        let tokens: Vec<PpoToken> = rows.iter().map(|r| r.0).collect();
        let lp: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let v: Vec<f64> = rows.iter().map(|r| r.2).collect();
        let (_, g_lp, g_v) = ppo_token_loss(&tokens, &lp, &v, &H);
        for i in 0..rows.len() {
            for (which, grad) in [(0, g_lp[i]), (1, g_v[i])] {
                let at = |d: f64| {
                    let (mut lp, mut v) = (lp.clone(), v.clone());
                    if which == 0 { lp[i] += d } else { v[i] += d }
                    ppo_token_loss(&tokens, &lp, &v, &H).0
                };
                let fd = (at(FD_STEP) - at(-FD_STEP)) / (2.0 * FD_STEP);
                prop_assert!(close(grad, fd, FINITE_DIFFERENCE), "token {i}, {which}: {grad} vs {fd}");
            }
        }
    }
}

/// The band's edges are closed: with the ratio exactly on `1 + eps` (A > 0)
/// or `1 - eps` (A < 0) the gradient passes ([C-CLIP]). The clip
/// half-widths are chosen so that the edge is exactly the ratio.
// spec: C-PPO-TOKEN C-CLIP
#[test]
fn ppo_gradient_passes_on_the_band_edges() {
    for (dlp, a) in [(0.18f64, 2.0), (-0.22f64, -1.0)] {
        let rho = dlp.exp();
        let epsilon = (rho - 1.0).abs();
        let edge = if a > 0.0 {
            1.0 + epsilon
        } else {
            1.0 - epsilon
        };
        assert_eq!(edge, rho, "the edge is the ratio");
        let h = PpoHyper { epsilon, ..H };
        let (_, g_lp, _) = ppo_token_loss(&[token(0.0, a, 0.0, 0.0)], &[dlp], &[0.0], &h);
        assert_close(g_lp[0], -a * rho, "on the edge");
    }
}
