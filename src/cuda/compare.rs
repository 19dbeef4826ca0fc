//! The token kernels' outputs for one row against the float64 reference
//! ([C-TOKEN-LOGPROB]): the one comparison that the differential tests
//! (`tests/cuda_kernels.rs`) and the fuzz target `host_token_kernels` share.

use super::ops::LogitElement;
use crate::reference::tokens::{token_logprob, token_logprob_grad};
use crate::tolerance::{F32_VS_F64, GRAD_FLOOR, GradTolerance};

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
