//! [C-FUSED-HEAD]'s chunk log-probs by the token kernels of
//! `kernels/token_logprob.cu` (`kernels = cuda`, or `cuda-host` on the
//! CPU): one read of the chunk's logits forward and one read and write
//! backward; the entropy, a metric, by libtorch ops from the kernels' row
//! stats.

use std::sync::Arc;

use tch::{Kind, Tensor};

use super::chunked::ChunkMath;
use super::error::HeadError;
use super::torch::{entropy_from_shifted, entropy_grad_, log_softmax_with_, needed};
use crate::cuda::torch_ops::TensorKernels;

/// The token kernels on each chunk.
pub struct KernelMath(pub Arc<dyn TensorKernels>);

impl ChunkMath for KernelMath {
    /// The kernels' `lse` pairs, `m` and `s`.
    fn stats_width(&self) -> i64 {
        2
    }

    fn forward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        entropy: bool,
    ) -> Result<(Tensor, Option<Tensor>, Tensor), HeadError> {
        let (logp, lse) = self
            .0
            .token_logprob_fwd_tensor(z, &targets.f_contiguous()?)?;
        let stats = lse.f_view([-1, 2])?;
        let h = if entropy {
            let _ = z.f_sub_(&stats.f_narrow(1, 0, 1)?)?;
            let _ = z.f_exp_out(work)?;
            let sum = stats.f_narrow(1, 1, 1)?.f_exp()?;
            Some(entropy_from_shifted(z, work, &sum, None)?)
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
        // A target outside the block is no entry of it: the kernel writes
        // `-a p` over the whole row.
        let mut g = self.0.token_logprob_bwd_tensor(
            z,
            &targets.f_contiguous()?,
            &stats.f_contiguous()?.f_view([-1])?,
            &a.f_to_kind(Kind::Float)?.f_contiguous()?,
        )?;
        if let Some(c) = c {
            log_softmax_with_(z, stats)?;
            let _ = z.f_exp_out(work)?;
            entropy_grad_(z, work, needed(entropy)?, c)?;
            let _ = g.f_sub_(z)?;
        }
        Ok(g)
    }
}
