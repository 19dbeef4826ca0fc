//! [C-FUSED-HEAD]'s chunk log-probs by the token kernels of
//! `kernels/token_logprob.cu` (`kernels = cuda`, or `cuda-host` on the
//! CPU): one read of the chunk's logits forward and one read and write
//! backward; the entropy, a metric, by libtorch ops from the kernels' row
//! stats.

use std::sync::Arc;

use tch::{Kind, Tensor};

use super::chunked::ChunkMath;
use super::error::HeadError;
use super::torch::{entropy_grad, entropy_of, log_softmax_with};
use crate::cuda::torch_ops::TensorKernels;

/// The token kernels on each chunk.
pub struct KernelMath(pub Arc<dyn TensorKernels>);

impl ChunkMath for KernelMath {
    fn forward(&self, z: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor, Tensor), HeadError> {
        let z = z.f_contiguous()?;
        let (logp, lse) = self
            .0
            .token_logprob_fwd_tensor(&z, &targets.f_contiguous()?)?;
        let stats = lse.f_view([-1, 2])?;
        let entropy = entropy_of(&log_softmax_with(&z, &stats)?)?;
        Ok((logp, entropy, stats))
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
        let z = z.f_contiguous()?;
        let mut g = self.0.token_logprob_bwd_tensor(
            &z,
            &targets.f_contiguous()?,
            &stats.f_contiguous()?.f_view([-1])?,
            &a.f_to_kind(Kind::Float)?.f_contiguous()?,
        )?;
        if let Some(c) = c {
            let _ = g.f_sub_(&entropy_grad(log_softmax_with(&z, stats)?, entropy, c)?)?;
        }
        Ok(g)
    }
}
