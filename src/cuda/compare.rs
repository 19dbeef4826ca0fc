//! The kernels' outputs against the float64 reference: the comparisons
//! that the differential tests (`tests/cuda_kernels.rs`) and the fuzz
//! targets (`host_token_kernels`, `host_sequence_kernels`) share. The token
//! kernels ([C-TOKEN-LOGPROB]) compute in float32 and are checked row by
//! row; the pair, sequence-sum and GAE kernels compute in float64 and are
//! checked to one float32 rounding plus float64 roundings scaled by their
//! summands ([C-F64-KERNELS]).

use super::CudaError;
use super::ops::{LogitElement, PairInputs, PairOutputs};
use crate::reference::gae::gae;
use crate::reference::losses::{log_sigmoid, sigmoid};
use crate::reference::tokens::{masked_sum, token_logprob, token_logprob_grad};
use crate::reference::{Algorithm, Hyper, PairConsts, PairVars, pair_loss};
use crate::tolerance::{
    F32_ROUNDING, F32_SUBNORMAL_HALF, F32_VS_F64, F64_SUMMANDS, GRAD_FLOOR, GradTolerance,
};

/// What a row's kernel outputs got wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Disagreement {
    /// `logp` or `lse` off by more than `F32_VS_F64 * max(1, |reference|)`.
    #[error("{what}: kernel {got}, reference {want}")]
    Scalar {
        what: &'static str,
        got: f64,
        want: f64,
    },
    /// The gradient row's worst entry off by more than `allowed`.
    #[error("gradient entry {at}: max error {worst:e}, allowed {allowed:e}")]
    Gradient { at: usize, worst: f64, allowed: f64 },
    /// A float64 kernel's output off by more than `allowed`
    /// ([C-F64-KERNELS]).
    #[error("{what}: kernel {got:e}, reference {want:e}, allowed error {allowed:e}")]
    Rounded {
        what: &'static str,
        got: f64,
        want: f64,
        allowed: f64,
    },
}

/// Why a fuzz case (`token_case`, `sequence_case`) failed: the launch
/// refused it, or an output (named by `at`) disagrees with the reference.
#[derive(Debug, thiserror::Error)]
pub enum CaseFailure {
    #[error("the kernels refused the case: {0}")]
    Launch(#[from] CudaError),
    #[error("{at}: {what}")]
    Output { at: String, what: Disagreement },
}

/// One row's inputs and what the kernels wrote for it, widened to float64:
/// `lse` the sum of the forward's `(hi, lo)` pair, `grad` the backward's row
/// for upstream gradient `g`.
#[derive(Clone, Copy, Debug)]
pub struct TokenRow<'a> {
    pub logits: &'a [f64],
    pub target: usize,
    pub g: f64,
    pub logp: f64,
    pub lse: f64,
    pub grad: &'a [f64],
}

/// Checks `row` against the reference: `logp` and `lse` (float32) to
/// `F32_VS_F64`, the gradient to `grad` (see `crate::tolerance`). A NaN
/// anywhere in the outputs (an entry left unwritten) disagrees.
pub fn check_token_row(row: TokenRow<'_>, grad: GradTolerance) -> Result<(), Disagreement> {
    let (want_logp, want_lse) = token_logprob(row.logits, row.target);
    scalar("logp", row.logp, want_logp, F32_VS_F64)?;
    scalar("lse", row.lse, want_lse, F32_VS_F64)?;

    let want = token_logprob_grad(row.logits, row.target, row.g);
    let scale = want.iter().fold(0.0f64, |m, d| m.max(d.abs()));
    let allowed = grad.relative * scale + GRAD_FLOOR * row.g.abs() + grad.subnormal;
    let (at, worst) = row
        .grad
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        // A NaN (unwritten entry) ranks above every error.
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    if worst.is_nan() || worst > allowed {
        return Err(Disagreement::Gradient { at, worst, allowed });
    }
    Ok(())
}

/// What the token kernels wrote for `N` rows: `logp [N]`, `lse [2N]` (the
/// `(hi, lo)` pairs) and the gradient `[N, V]`.
#[derive(Clone, Copy, Debug)]
pub struct TokenOutputs<'a, T> {
    pub logp: &'a [f32],
    pub lse: &'a [f32],
    pub grad: &'a [T],
}

/// [`check_token_row`] on every row of `[N, V]` logits with targets and
/// upstream gradients `[N]`: the first row that disagrees, and how.
pub fn check_token_rows<T: LogitElement>(
    logits: &[T],
    targets: &[i64],
    g: &[f32],
    v: usize,
    out: TokenOutputs<'_, T>,
    grad: GradTolerance,
) -> Result<(), (usize, Disagreement)> {
    let wide = |x: &[T]| -> Vec<f64> { x.iter().map(|e| e.to_f64()).collect() };
    for (r, &t) in targets.iter().enumerate() {
        let cols = r * v..(r + 1) * v;
        let row = TokenRow {
            logits: &wide(&logits[cols.clone()]),
            target: t as usize,
            g: f64::from(g[r]),
            logp: f64::from(out.logp[r]),
            lse: f64::from(out.lse[2 * r]) + f64::from(out.lse[2 * r + 1]),
            grad: &wide(&out.grad[cols]),
        };
        check_token_row(row, grad).map_err(|e| (r, e))?;
    }
    Ok(())
}

/// `got` within `tol * max(1, |want|)` of `want`.
fn scalar(what: &'static str, got: f64, want: f64, tol: f64) -> Result<(), Disagreement> {
    if (got - want).abs() <= tol * want.abs().max(1.0) {
        Ok(())
    } else {
        Err(Disagreement::Scalar { what, got, want })
    }
}

// ---- the float64 kernels ([C-F64-KERNELS]) ---------------------------------

/// `got` (a float32 output) is `want` rounded once to float32, after
/// float64 roundings of up to `F64_SUMMANDS * scale`. A NaN disagrees.
fn rounded(what: &'static str, got: f32, want: f64, scale: f64) -> Result<(), Disagreement> {
    let allowed = F32_ROUNDING * want.abs() + F64_SUMMANDS * scale + F32_SUBNORMAL_HALF;
    let got = f64::from(got);
    if (got - want).abs() <= allowed {
        Ok(())
    } else {
        Err(Disagreement::Rounded {
            what,
            got,
            want,
            allowed,
        })
    }
}

/// The magnitudes that a pair's float64 roundings scale with (the loss's and
/// the gradient's), and whether each gradient's clipped quantity lies
/// within such roundings of its band's edge.
struct PairScale {
    loss: f64,
    grad: f64,
    on_edge: [bool; 2],
}

/// Whether `q` lies within `F64_SUMMANDS * scale` of either edge of the band
/// `[lo, hi]` (never, for an unbounded band).
fn on_edge(q: f64, (lo, hi): (f64, f64), scale: f64) -> bool {
    let near = |edge: f64| (q - edge).abs() <= F64_SUMMANDS * scale;
    lo.is_finite() && (near(lo) || near(hi))
}

/// # Formula
/// With `S_D = |r1| + |r2| + beta (|lp_old1| + |lp_ref1| + |lp_old2| +
/// |lp_ref2|)` (what `D` is summed from) and `rho_i = exp(lp_i - lp_old_i)`,
/// whose argument carries a rounding of `|lp_i - lp_old_i|`:
/// - P3O: the weight `D rho1 rho2` has scale `W = S_D rho1 rho2 (2 + |lp1 -
///   lp_old1| + |lp2 - lp_old2|)`, the gradient's scale. V1's loss adds
///   `D rho_j clip(rho_i)`, scale `W |clip(rho_i)| / rho_i` each; its
///   clipped `rho_i` and band `1 +- eps` carry roundings of `rho_i (2 +
///   |lp_i - lp_old_i|) + 1 + eps`. V2 clips `l = lp1 - lp2` against
///   `lp_old1 - lp_old2 +- eps`, roundings of `L = |lp1| + |lp2| +
///   |lp_old1| + |lp_old2| + eps`, so its loss `A clip(l)` has scale
///   `W |clip(l)| + |A| L`. An unbounded band adds no rounding.
/// - DPO: the margin `u` is summed from `S_u = beta (|lp1| + |lp_ref1| +
///   |lp2| + |lp_ref2|)` and `s = sigma(r1 - r2)` from `S_r = |r1| + |r2|`;
///   the loss has slope at most 1 in `u` and `|u|` in `s`, so its scale is
///   `S_u + (1 + |u|) (S_r + 2)` plus its two terms; the gradient's is
///   `beta (S_u + S_r + 2)`. Nothing is clipped.
fn pair_scale(alg: Algorithm, h: &Hyper, c: &PairConsts, lp: [f64; 2]) -> PairScale {
    let eps = h.epsilon;
    if alg == Algorithm::Dpo {
        let s_u = h.beta * (lp[0].abs() + c.lp_ref[0].abs() + lp[1].abs() + c.lp_ref[1].abs());
        let s_r = c.reward[0].abs() + c.reward[1].abs() + 2.0;
        let s = sigmoid(c.reward[0] - c.reward[1]);
        let u = h.beta * ((lp[0] - c.lp_ref[0]) - (lp[1] - c.lp_ref[1]));
        let terms = (s * log_sigmoid(u)).abs() + ((1.0 - s) * log_sigmoid(-u)).abs();
        return PairScale {
            loss: s_u + (1.0 + u.abs()) * s_r + terms,
            grad: h.beta * (s_u + s_r),
            on_edge: [false; 2],
        };
    }
    let s_d = c.reward[0].abs()
        + c.reward[1].abs()
        + h.beta * (c.lp_old[0].abs() + c.lp_ref[0].abs() + c.lp_old[1].abs() + c.lp_ref[1].abs());
    let step = [0, 1].map(|i| (lp[i] - c.lp_old[i]).abs());
    let rho = [0, 1].map(|i| (lp[i] - c.lp_old[i]).exp());
    let w = s_d * rho[0] * rho[1] * (2.0 + step[0] + step[1]);
    let band = if eps.is_finite() { eps } else { 0.0 };
    if alg == Algorithm::P3oV2 {
        let l = lp[0] - lp[1];
        let l_old = c.lp_old[0] - c.lp_old[1];
        let clip = l.max(l_old - eps).min(l_old + eps).abs();
        let logs = lp[0].abs() + lp[1].abs() + c.lp_old[0].abs() + c.lp_old[1].abs() + band;
        let r = c.shaped_reward(h.beta);
        let a = ((r[0] - r[1]) * rho[0] * rho[1]).abs();
        let edge = on_edge(l, (l_old - eps, l_old + eps), logs);
        PairScale {
            loss: w * clip + a * logs,
            grad: w,
            on_edge: [edge; 2],
        }
    } else {
        let clip = rho.map(|q| q.max(1.0 - eps).min(1.0 + eps).abs());
        PairScale {
            loss: w * (clip[0] / rho[0] + clip[1] / rho[1]),
            grad: w,
            on_edge: [0, 1].map(|i| {
                let scale = rho[i] * (2.0 + step[i]) + 1.0 + band;
                on_edge(rho[i], (1.0 - eps, 1.0 + eps), scale)
            }),
        }
    }
}

/// The pair kernel of `alg` ([C-P3O-V1], [C-P3O-V2] or [C-DPO]) wrote `out`
/// for the pairs `x`: every loss and gradient agrees with
/// [`pair_loss`] to [C-F64-KERNELS]. A gradient whose clipped quantity lies
/// on its band's edge may also be the other side's: 0 or the unclipped
/// gradient. The first pair that disagrees, and how.
pub fn check_pairs(
    alg: Algorithm,
    h: &Hyper,
    x: &PairInputs<Vec<f32>, Vec<f64>>,
    out: &PairOutputs<Vec<f32>>,
) -> Result<(), (usize, Disagreement)> {
    let unclipped = Hyper {
        epsilon: f64::INFINITY,
        ..*h
    };
    for i in 0..x.lp[0].len() {
        let wide = |p: &[Vec<f32>; 2]| [f64::from(p[0][i]), f64::from(p[1][i])];
        let c = PairConsts {
            reward: [x.reward[0][i], x.reward[1][i]],
            lp_old: wide(&x.lp_old),
            lp_ref: wide(&x.lp_ref),
        };
        let at = PairVars {
            lp: wide(&x.lp),
            value: 0.0,
        };
        let want = pair_loss(alg, h, &c, at);
        let scale = pair_scale(alg, h, &c, at.lp);
        let check = || -> Result<(), Disagreement> {
            rounded("loss", out.loss[i], want.loss, scale.loss)?;
            for k in 0..2 {
                let what = ["d loss / d lp1", "d loss / d lp2"][k];
                let got = out.grad[k][i];
                let Err(e) = rounded(what, got, want.grad.lp[k], scale.grad) else {
                    continue;
                };
                let other_side = [0.0, pair_loss(alg, &unclipped, &c, at).grad.lp[k]];
                let either = other_side
                    .iter()
                    .any(|&other| rounded(what, got, other, scale.grad).is_ok());
                if !(scale.on_edge[k] && either) {
                    return Err(e);
                }
            }
            Ok(())
        };
        check().map_err(|e| (i, e))?;
    }
    Ok(())
}

/// The magnitude of `sum_t mask_t (a_t - c_t)`'s summands.
fn masked_scale(a: &[f64], c: Option<&[f64]>, mask: &[f64]) -> f64 {
    let abs = |x: &[f64]| x.iter().map(|v| v.abs()).collect::<Vec<_>>();
    masked_sum(&abs(a), None, &abs(mask)) + c.map_or(0.0, |c| masked_sum(&abs(c), None, &abs(mask)))
}

/// The sequence-sum kernel ([C-SEQ-LOGPROB]) wrote `out` (one sum per row of
/// `t_len`) for `a`, `c` and `mask`: each agrees with the reference to
/// [C-F64-KERNELS], scaled by the magnitude of its summands. The first row
/// that disagrees, and how.
pub fn check_seq_sums(
    a: &[f32],
    c: Option<&[f32]>,
    mask: &[f32],
    t_len: usize,
    out: &[f32],
) -> Result<(), (usize, Disagreement)> {
    let wide = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    for (b, &got) in out.iter().enumerate() {
        let s = b * t_len..(b + 1) * t_len;
        let (a, m) = (wide(&a[s.clone()]), wide(&mask[s.clone()]));
        let c = c.map(|c| wide(&c[s]));
        let want = masked_sum(&a, c.as_deref(), &m);
        let scale = masked_scale(&a, c.as_deref(), &m);
        rounded("masked sum", got, want, scale).map_err(|e| (b, e))?;
    }
    Ok(())
}

/// What the GAE kernel wrote: advantages and value targets, `[B, T]`.
#[derive(Clone, Copy, Debug)]
pub struct GaeOutputs<'a> {
    pub adv: &'a [f32],
    pub ret: &'a [f32],
}

/// The advantages' scales `S_t` of [`check_gae`]'s formula.
fn gae_scale(r: &[f64], v: &[f64], m: &[f64], gamma: f64, lambda: f64) -> Vec<f64> {
    let mut s = vec![0.0; r.len()];
    let (mut next_s, mut next_v, mut next_m) = (0.0, 0.0, 0.0);
    for t in (0..r.len()).rev() {
        let step = r[t].abs() + gamma * next_m * next_v + v[t].abs();
        s[t] = m[t].abs() * (step + gamma * lambda * next_s);
        (next_s, next_v, next_m) = (s[t], v[t].abs(), m[t].abs());
    }
    s
}

/// The GAE kernel ([C-GAE]) wrote `out` for rewards `r`, values `v` and mask
/// `m` (`[B, T]`): every advantage and value target agrees with the
/// reference to [C-F64-KERNELS]. The first `(row, token)` that disagrees,
/// and how.
///
/// # Formula
/// The advantages' scale follows the scan on magnitudes: `S_t = m_t (|r_t| +
/// gamma m_{t+1} |V_{t+1}| + |V_t| + gamma lambda S_{t+1})`; the value
/// target's is `m_t (S_t + |V_t|)`.
pub fn check_gae(
    (r, v, m): (&[f32], &[f32], &[f32]),
    (gamma, lambda): (f64, f64),
    t_len: usize,
    out: GaeOutputs<'_>,
) -> Result<(), ((usize, usize), Disagreement)> {
    let wide = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    for b in 0..r.len() / t_len.max(1) {
        let s = b * t_len..(b + 1) * t_len;
        let (r, v, m) = (
            wide(&r[s.clone()]),
            wide(&v[s.clone()]),
            wide(&m[s.clone()]),
        );
        let (adv, ret) = gae(&r, &v, &m, gamma, lambda);
        let mag = gae_scale(&r, &v, &m, gamma, lambda);
        for t in 0..t_len {
            let k = s.start + t;
            let checks = [
                ("advantage", out.adv[k], adv[t], mag[t]),
                (
                    "value target",
                    out.ret[k],
                    ret[t],
                    mag[t] + m[t].abs() * v[t].abs(),
                ),
            ];
            for (what, got, want, scale) in checks {
                rounded(what, got, want, scale).map_err(|e| ((b, t), e))?;
            }
        }
    }
    Ok(())
}
