//! The token log-prob kernels on libtorch CUDA tensors ([C-TOKEN-LOGPROB])
//! (features `cuda` and `torch`): device pointers from tch, launched on the
//! legacy default stream, which is libtorch's current stream unless a
//! program selects another one, so the launches are ordered with the tch
//! ops around them. Outputs are allocated by libtorch.

use cudarc::driver::PushKernelArg;
use tch::{Device, Kind, Tensor};

use super::launch::{TOKEN_BLOCK, grid};
use super::ops::{Bf16, LogitElement};
use super::{CudaError, Gpu};

fn input(ok: bool, what: impl FnOnce() -> String) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Input(what()))
    }
}

/// The (forward, backward) kernels for logits of `kind` (checked to be
/// float32 or bfloat16).
fn kernel_for(kind: Kind) -> (&'static str, &'static str) {
    if kind == Kind::BFloat16 {
        (Bf16::FWD, Bf16::BWD)
    } else {
        (<f32 as LogitElement>::FWD, <f32 as LogitElement>::BWD)
    }
}

impl Gpu {
    /// Checks that `t` lives on this GPU, is contiguous and has `kind`.
    fn check_tensor(&self, name: &str, t: &Tensor, kinds: &[Kind]) -> Result<(), CudaError> {
        input(t.device() == Device::Cuda(self.ctx.ordinal()), || {
            format!(
                "{name} is on {:?}, the kernels on cuda:{}",
                t.device(),
                self.ctx.ordinal()
            )
        })?;
        input(t.is_contiguous(), || format!("{name} is not contiguous"))?;
        input(kinds.contains(&t.kind()), || {
            format!(
                "{name} has dtype {:?} (expected one of {kinds:?})",
                t.kind()
            )
        })
    }

    fn logits_shape(&self, logits: &Tensor, targets: &Tensor) -> Result<(i64, i64), CudaError> {
        self.check_tensor("logits", logits, &[Kind::Float, Kind::BFloat16])?;
        self.check_tensor("targets", targets, &[Kind::Int64])?;
        let size = logits.size();
        input(size.len() == 2 && size[0] >= 1 && size[1] >= 1, || {
            format!("logits must be [N, V], got {size:?}")
        })?;
        input(targets.size() == [size[0]], || {
            format!("targets must be [{}], got {:?}", size[0], targets.size())
        })?;
        input(size[1] <= i64::from(i32::MAX), || {
            format!("V = {} is too large", size[1])
        })?;
        Ok((size[0], size[1]))
    }

    /// Forward on tensors: `logits [N, V]` (float32 or bfloat16),
    /// `targets [N]` (int64) -> `(logp [N], lse [2N])`, float32.
    pub fn token_logprob_fwd_tensor(
        &self,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor), CudaError> {
        let (n, v) = self.logits_shape(logits, targets)?;
        let device = logits.device();
        let logp = Tensor::empty([n], (Kind::Float, device));
        let lse = Tensor::empty([2 * n], (Kind::Float, device));
        let name = kernel_for(logits.kind()).0;
        let ptrs = [logits, targets, &logp, &lse].map(|t| t.data_ptr() as u64);
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(self.kernels.get(name));
        launch
            .arg(&ptrs[0])
            .arg(&ptrs[1])
            .arg(&ptrs[2])
            .arg(&ptrs[3])
            .arg(&v32);
        // SAFETY: the arguments match the kernel's (logits, targets, logp,
        // lse, v); every pointer is a contiguous tensor on this device,
        // checked above to hold N rows of V logits, N targets, N and 2N
        // floats; the tensors outlive the launch on the stream that libtorch
        // also uses, so no other op touches them meanwhile.
        unsafe { launch.launch(grid(n as usize, TOKEN_BLOCK)?.into()) }?;
        Ok((logp, lse))
    }

    /// Backward on tensors: `d loss / d logits = g ([v = t] - softmax)`, in
    /// the logits' dtype, from the forward's `lse` and `grad_logp [N]`
    /// (float32).
    pub fn token_logprob_bwd_tensor(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        grad_logp: &Tensor,
    ) -> Result<Tensor, CudaError> {
        let (n, v) = self.logits_shape(logits, targets)?;
        self.check_tensor("lse", lse, &[Kind::Float])?;
        self.check_tensor("grad_logp", grad_logp, &[Kind::Float])?;
        input(lse.size() == [2 * n] && grad_logp.size() == [n], || {
            format!(
                "N = {n}: lse {:?}, grad_logp {:?}",
                lse.size(),
                grad_logp.size()
            )
        })?;
        let grad = Tensor::empty([n, v], (logits.kind(), logits.device()));
        let name = kernel_for(logits.kind()).1;
        let ptrs = [logits, targets, lse, grad_logp, &grad].map(|t| t.data_ptr() as u64);
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(self.kernels.get(name));
        launch
            .arg(&ptrs[0])
            .arg(&ptrs[1])
            .arg(&ptrs[2])
            .arg(&ptrs[3])
            .arg(&ptrs[4])
            .arg(&v32);
        // SAFETY: arguments match (logits, targets, lse, grad_logp,
        // grad_logits, v); all are contiguous tensors on this device with the
        // shapes checked above, alive until the launch has run on libtorch's
        // stream.
        unsafe { launch.launch(grid(n as usize, TOKEN_BLOCK)?.into()) }?;
        Ok(grad)
    }
}
