//! [C-FUSED-HEAD]'s chunk softmax by libtorch ops (`kernels = torch`), on
//! the CPU or the GPU: three or four `[C, V]` float32 temporaries a chunk.

use tch::{Kind, Tensor};

use super::chunked::ChunkMath;
use super::error::HeadError;

/// libtorch's ops on each chunk.
pub struct TorchMath;

/// `log softmax(z)` `[C, V]` as `(z - m) - s`, and the stats `[C, 2]`.
fn log_softmax(z: &Tensor) -> Result<(Tensor, Tensor), HeadError> {
    let m = z.f_amax([-1i64].as_slice(), true)?;
    let shifted = z.f_sub(&m)?;
    let s = shifted
        .f_exp()?
        .f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?
        .f_log()?;
    let log_p = shifted.f_sub(&s)?;
    Ok((log_p, Tensor::f_cat(&[m, s], 1)?))
}

/// `log softmax(z)` from the forward's stats.
pub(super) fn log_softmax_with(z: &Tensor, stats: &Tensor) -> Result<Tensor, HeadError> {
    let m = stats.f_narrow(1, 0, 1)?;
    let s = stats.f_narrow(1, 1, 1)?;
    Ok(z.f_sub(&m)?.f_sub_(&s)?)
}

impl ChunkMath for TorchMath {
    fn forward(&self, z: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor, Tensor), HeadError> {
        let (log_p, stats) = log_softmax(z)?;
        let logp = log_p
            .f_gather(1, &targets.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?;
        Ok((logp, entropy_of(&log_p)?, stats))
    }

    fn backward(
        &self,
        z: &Tensor,
        targets: &Tensor,
        stats: &Tensor,
        entropy: &Tensor,
        a: &Tensor,
        c: Option<&Tensor>,
    ) -> Result<Tensor, HeadError> {
        let log_p = log_softmax_with(z, stats)?;
        let t = targets.f_unsqueeze(1)?;
        let a = a.f_unsqueeze(1)?;
        // The target's 1 - p as the sum of the others ([C-TOKEN-LOGPROB]).
        let others = log_p.f_exp()?.f_scatter_value(1, &t, 0.0)?;
        let rest = others.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?;
        let mut g = others.f_mul(&a)?.f_neg_()?;
        let _ = g.f_scatter_(1, &t, &rest.f_mul(&a)?)?;
        if let Some(c) = c {
            let _ = g.f_sub_(&entropy_grad(log_p, entropy, c)?)?;
        }
        Ok(g)
    }
}

/// `-sum_v p_v log p_v` `[C]` from `log p [C, V]`.
pub(super) fn entropy_of(log_p: &Tensor) -> Result<Tensor, HeadError> {
    Ok(log_p
        .f_exp()?
        .f_mul(log_p)?
        .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?
        .f_neg()?)
}

/// `c p (log p + H)` `[C, V]`, the entropy's part of `-G`, consuming `log p`.
pub(super) fn entropy_grad(
    mut log_p: Tensor,
    entropy: &Tensor,
    c: &Tensor,
) -> Result<Tensor, HeadError> {
    let p = log_p.f_exp()?;
    Ok(log_p
        .f_add_(&entropy.f_unsqueeze(1)?)?
        .f_mul_(&p)?
        .f_mul_(&c.f_unsqueeze(1)?)?)
}
