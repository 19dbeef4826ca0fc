//! [C-FUSED-HEAD]'s chunk softmax by libtorch ops (`kernels = torch`), on
//! the CPU or the GPU: three or four `[C, V]` float32 temporaries a chunk.

use tch::{Kind, Tensor};

use super::chunked::ChunkMath;
use super::error::HeadError;

/// libtorch's ops on each chunk.
pub struct TorchMath;

/// `log softmax(z)` in place of `z`, from the forward's stats.
pub(super) fn log_softmax_with_(z: &mut Tensor, stats: &Tensor) -> Result<(), HeadError> {
    let _ = z.f_sub_(&stats.f_narrow(1, 0, 1)?)?;
    let _ = z.f_sub_(&stats.f_narrow(1, 1, 1)?)?;
    Ok(())
}

/// The entropy `[C]` from `y = z - m`, `e = exp(y)` (overwritten) and
/// `sum_v e_v`, plus `extra` (a term `e_t y_t` taken out of `e` before):
/// `H = log sum e - (sum_v e_v y_v + extra) / sum e`.
pub(super) fn entropy_from_shifted(
    y: &Tensor,
    e: &mut Tensor,
    sum: &Tensor,
    extra: Option<&Tensor>,
) -> Result<Tensor, HeadError> {
    let _ = e.f_mul_(y)?;
    let mut dot = e.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
    if let Some(extra) = extra {
        dot = dot.f_add(extra)?;
    }
    Ok(sum.f_log()?.f_sub(&dot.f_div(sum)?)?.f_squeeze_dim(1)?)
}

/// `log p` into `c p (log p + H)`, the entropy's part of `-G`, in place,
/// given `p`.
pub(super) fn entropy_grad_(
    log_p: &mut Tensor,
    p: &Tensor,
    entropy: &Tensor,
    c: &Tensor,
) -> Result<(), HeadError> {
    let _ = log_p.f_add_(&entropy.f_unsqueeze(1)?)?;
    let _ = log_p.f_mul_(p)?;
    let _ = log_p.f_mul_(&c.f_unsqueeze(1)?)?;
    Ok(())
}

/// The entropy a backward with `c` needs.
pub(super) fn needed(entropy: Option<&Tensor>) -> Result<&Tensor, HeadError> {
    entropy.ok_or_else(|| HeadError::Shape("the entropy's gradient needs the entropy".into()))
}

impl ChunkMath for TorchMath {
    /// `m`, `s` and `rest = sum_{v != t} p_v`, the target's `1 - p_t`
    /// without cancellation.
    fn stats_width(&self) -> i64 {
        3
    }

    fn forward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        entropy: bool,
    ) -> Result<(Tensor, Option<Tensor>, Tensor), HeadError> {
        let t = targets.f_unsqueeze(1)?;
        let m = z.f_amax([-1i64].as_slice(), true)?;
        let _ = z.f_sub_(&m)?;
        let _ = z.f_exp_out(work)?;
        let (e_t, y_t) = (work.f_gather(1, &t, false)?, z.f_gather(1, &t, false)?);
        // The sum of the others, then the target's term added back.
        let _ = work.f_scatter_value_(1, &t, 0.0)?;
        let others = work.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
        let sum = others.f_add(&e_t)?;
        let s = sum.f_log()?;
        // logp = (z_t - m) - s, exact to rounding however large m is.
        let logp = y_t.f_sub(&s)?.f_squeeze_dim(1)?;
        let h = if entropy {
            let extra = e_t.f_mul(&y_t)?;
            Some(entropy_from_shifted(z, work, &sum, Some(&extra))?)
        } else {
            None
        };
        let stats = Tensor::f_cat(&[m, s, others.f_div(&sum)?], 1)?;
        Ok((logp, h, stats))
    }

    fn backward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        stats: &Tensor,
        entropy: Option<&Tensor>,
        a: &Tensor,
        c: Option<&Tensor>,
    ) -> Result<Tensor, HeadError> {
        let cols = z.size()[1];
        log_softmax_with_(z, stats)?;
        let a = a.f_unsqueeze(1)?;
        let _ = z.f_exp_out(work)?;
        if let Some(c) = c {
            entropy_grad_(z, work, needed(entropy)?, c)?;
        }
        let _ = work.f_mul_(&a.f_neg()?)?;
        if c.is_some() {
            let _ = work.f_sub_(z)?;
        }
        // The targets in this block: a (1 - p_t) as a times the others' sum
        // ([C-TOKEN-LOGPROB]), less the entropy's term there.
        let t = targets.f_unsqueeze(1)?;
        let inside = t.f_ge(0)?.f_logical_and(&t.f_lt(cols)?)?;
        let at = t.f_clamp(0, cols - 1)?;
        let mut value = stats.f_narrow(1, 2, 1)?.f_mul(&a)?;
        if c.is_some() {
            value = value.f_sub(&z.f_gather(1, &at, false)?)?;
        }
        let kept = work.f_gather(1, &at, false)?;
        let _ = work.f_scatter_(1, &at, &value.f_where_self(&inside, &kept)?)?;
        Ok(work.shallow_clone())
    }
}
