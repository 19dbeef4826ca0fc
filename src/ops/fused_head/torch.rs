//! [C-FUSED-HEAD]'s chunk softmax by libtorch ops (`kernels = torch`), on
//! the CPU or the GPU: three or four `[C, V]` float32 temporaries a chunk.

use tch::{Kind, Tensor};

use super::chunked::ChunkMath;
use super::error::HeadError;

/// libtorch's ops on each chunk.
pub struct TorchMath;

/// Per row of `z`: the stats `[C, 2]` (`m` and `s = log sum exp(z -
/// m)`), with `z` left holding `z - m` and `work` holding `exp(z - m)`.
fn shifted_(z: &mut Tensor, work: &mut Tensor) -> Result<(Tensor, Tensor), HeadError> {
    let m = z.f_amax([-1i64].as_slice(), true)?;
    let _ = z.f_sub_(&m)?;
    let _ = z.f_exp_out(work)?;
    let sum = work.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
    let s = sum.f_log()?;
    Ok((Tensor::f_cat(&[m, s], 1)?, sum))
}

/// The entropy `[C]` from `y = z - m`, `e = exp(y)` (overwritten) and
/// `sum_v e_v`: `H = log sum e - sum_v e_v y_v / sum e`.
pub(super) fn entropy_from_shifted(
    y: &Tensor,
    e: &mut Tensor,
    sum: &Tensor,
) -> Result<Tensor, HeadError> {
    let _ = e.f_mul_(y)?;
    let mean = e
        .f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?
        .f_div(sum)?;
    Ok(sum.f_log()?.f_sub(&mean)?.f_squeeze_dim(1)?)
}

/// `log softmax(z)` in place of `z`, from the forward's stats.
pub(super) fn log_softmax_with_(z: &mut Tensor, stats: &Tensor) -> Result<(), HeadError> {
    let _ = z.f_sub_(&stats.f_narrow(1, 0, 1)?)?;
    let _ = z.f_sub_(&stats.f_narrow(1, 1, 1)?)?;
    Ok(())
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
    fn forward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        entropy: bool,
    ) -> Result<(Tensor, Option<Tensor>, Tensor), HeadError> {
        let (stats, sum) = shifted_(z, work)?;
        // logp = (z_t - m) - s, exact to rounding however large m is.
        let logp = z
            .f_gather(1, &targets.f_unsqueeze(1)?, false)?
            .f_sub(&stats.f_narrow(1, 1, 1)?)?
            .f_squeeze_dim(1)?;
        let h = if entropy {
            Some(entropy_from_shifted(z, work, &sum)?)
        } else {
            None
        };
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
        log_softmax_with_(z, stats)?;
        let t = targets.f_unsqueeze(1)?;
        let a = a.f_unsqueeze(1)?;
        let _ = z.f_exp_out(work)?;
        if let Some(c) = c {
            entropy_grad_(z, work, needed(entropy)?, c)?;
        }
        // The target's 1 - p as the sum of the others ([C-TOKEN-LOGPROB]).
        let _ = work.f_scatter_value_(1, &t, 0.0)?;
        let rest = work.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
        let _ = work.f_mul_(&a)?.f_neg_()?;
        let _ = work.f_scatter_(1, &t, &rest.f_mul(&a)?)?;
        if c.is_some() {
            let _ = work.f_sub_(z)?;
        }
        Ok(work.shallow_clone())
    }
}
