//! The token log-prob kernels on libtorch tensors ([C-TOKEN-LOGPROB])
//! (features `cuda` and `torch`), with one set of tensor checks for both
//! places they run: CUDA tensors on the GPU (device pointers from tch,
//! launched on the legacy default stream, which is libtorch's current stream
//! unless a program selects another one, so the launches are ordered with
//! the tch ops around them) and CPU tensors with the host execution of the
//! same sources (`super::host`). Outputs are allocated by libtorch.

use cudarc::driver::PushKernelArg;
use tch::{Device, Kind, Tensor};

use super::host::{Host, HostLogitElement};
use super::launch::{self, Grid, check};
use super::ops::{Bf16, LogitElement};
use super::{CudaError, Gpu};

/// The token kernels on the tensors of one device.
pub trait TensorKernels: Send + Sync {
    /// The device whose tensors these kernels take.
    fn device(&self) -> Device;

    /// Launches the forward kernel for logits of `kind` (float32 or
    /// bfloat16).
    ///
    /// # Safety
    /// `ptrs` are the data of (logits, targets, logp, lse): contiguous
    /// tensors on [`Self::device`] of the lengths `grid` was computed from
    /// by `launch::token_fwd`, alive until the launch has run.
    unsafe fn launch_fwd(
        &self,
        kind: Kind,
        ptrs: [u64; 4],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError>;

    /// Launches the backward kernel for logits of `kind`.
    ///
    /// # Safety
    /// As [`Self::launch_fwd`], for (logits, targets, lse, grad_logp,
    /// grad_logits) and `launch::token_bwd`.
    unsafe fn launch_bwd(
        &self,
        kind: Kind,
        ptrs: [u64; 5],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError>;

    /// Checks that `t` lives on this device, is contiguous and has `kind`.
    fn check_tensor(&self, name: &str, t: &Tensor, kinds: &[Kind]) -> Result<(), CudaError> {
        check(t.device() == self.device(), || {
            format!(
                "{name} is on {:?}, the kernels on {:?}",
                t.device(),
                self.device()
            )
        })?;
        check(t.is_contiguous(), || format!("{name} is not contiguous"))?;
        check(kinds.contains(&t.kind()), || {
            format!(
                "{name} has dtype {:?} (expected one of {kinds:?})",
                t.kind()
            )
        })
    }

    /// `(N, V)` of `logits [N, V]` with `targets [N]`, both checked.
    fn logits_shape(&self, logits: &Tensor, targets: &Tensor) -> Result<(i64, i64), CudaError> {
        self.check_tensor("logits", logits, &[Kind::Float, Kind::BFloat16])?;
        self.check_tensor("targets", targets, &[Kind::Int64])?;
        let size = logits.size();
        check(size.len() == 2 && size[0] >= 1 && size[1] >= 1, || {
            format!("logits must be [N, V], got {size:?}")
        })?;
        check(targets.size() == [size[0]], || {
            format!("targets must be [{}], got {:?}", size[0], targets.size())
        })?;
        Ok((size[0], size[1]))
    }

    /// Forward on tensors: `logits [N, V]` (float32 or bfloat16),
    /// `targets [N]` (int64) -> `(logp [N], lse [2N])`, float32.
    fn token_logprob_fwd_tensor(
        &self,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor), CudaError> {
        let (n, v) = self.logits_shape(logits, targets)?;
        let (nu, vu) = (n as usize, v as usize);
        let grid = launch::token_fwd(nu * vu, vu, nu, nu, 2 * nu)?;
        let logp = Tensor::empty([n], (Kind::Float, self.device()));
        let lse = Tensor::empty([2 * n], (Kind::Float, self.device()));
        let ptrs = [logits, targets, &logp, &lse].map(|t| t.data_ptr() as u64);
        // SAFETY: every tensor is contiguous on this device (checked above or
        // allocated here) with the lengths `grid` was computed from (v fits
        // an i32, checked by `launch::token_fwd`); all outlive the launch.
        unsafe { self.launch_fwd(logits.kind(), ptrs, v as i32, grid) }?;
        Ok((logp, lse))
    }

    /// Backward on tensors: `d loss / d logits = g ([v = t] - softmax)`, in
    /// the logits' dtype, from the forward's `lse` and `grad_logp [N]`
    /// (float32).
    fn token_logprob_bwd_tensor(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        grad_logp: &Tensor,
    ) -> Result<Tensor, CudaError> {
        let (n, v) = self.logits_shape(logits, targets)?;
        self.check_tensor("lse", lse, &[Kind::Float])?;
        self.check_tensor("grad_logp", grad_logp, &[Kind::Float])?;
        let (nu, vu) = (n as usize, v as usize);
        let grid = launch::token_bwd(nu * vu, vu, nu, lse.numel(), grad_logp.numel(), nu * vu)?;
        let grad = Tensor::empty([n, v], (logits.kind(), self.device()));
        let ptrs = [logits, targets, lse, grad_logp, &grad].map(|t| t.data_ptr() as u64);
        // SAFETY: as in the forward; `launch::token_bwd` checked lse (2N)
        // and grad_logp (N); grad is allocated here with the logits' shape.
        unsafe { self.launch_bwd(logits.kind(), ptrs, v as i32, grid) }?;
        Ok(grad)
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

impl TensorKernels for Gpu {
    fn device(&self) -> Device {
        Device::Cuda(self.ctx.ordinal())
    }

    unsafe fn launch_fwd(
        &self,
        kind: Kind,
        ptrs: [u64; 4],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        let mut launch = self
            .stream
            .launch_builder(self.kernels.get(kernel_for(kind).0));
        launch
            .arg(&ptrs[0])
            .arg(&ptrs[1])
            .arg(&ptrs[2])
            .arg(&ptrs[3])
            .arg(&v);
        // SAFETY: the arguments match the kernel's (logits, targets, logp,
        // lse, v); the caller guarantees device tensors of the grid's
        // lengths, alive until the launch has run on the stream that
        // libtorch also uses, so no other op touches them meanwhile.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }

    unsafe fn launch_bwd(
        &self,
        kind: Kind,
        ptrs: [u64; 5],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        let mut launch = self
            .stream
            .launch_builder(self.kernels.get(kernel_for(kind).1));
        launch
            .arg(&ptrs[0])
            .arg(&ptrs[1])
            .arg(&ptrs[2])
            .arg(&ptrs[3])
            .arg(&ptrs[4])
            .arg(&v);
        // SAFETY: arguments match (logits, targets, lse, grad_logp,
        // grad_logits, v); the caller guarantees the rest, as above.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }
}

/// The host execution's entry points for element type `T`, on raw pointers.
///
/// # Safety
/// As [`TensorKernels::launch_fwd`], with host memory.
unsafe fn host_fwd<T: HostLogitElement>(ptrs: [u64; 4], v: i32, grid: Grid) -> i32 {
    // SAFETY: the caller's contract is the kernel's.
    unsafe {
        T::fwd(
            ptrs[0] as *const T,
            ptrs[1] as *const i64,
            ptrs[2] as *mut f32,
            ptrs[3] as *mut f32,
            v,
            grid,
        )
    }
}

/// # Safety
/// As [`TensorKernels::launch_bwd`], with host memory.
unsafe fn host_bwd<T: HostLogitElement>(ptrs: [u64; 5], v: i32, grid: Grid) -> i32 {
    // SAFETY: the caller's contract is the kernel's.
    unsafe {
        T::bwd(
            ptrs[0] as *const T,
            ptrs[1] as *const i64,
            ptrs[2] as *const f32,
            ptrs[3] as *const f32,
            ptrs[4] as *mut T,
            v,
            grid,
        )
    }
}

impl TensorKernels for Host {
    fn device(&self) -> Device {
        Device::Cpu
    }

    unsafe fn launch_fwd(
        &self,
        kind: Kind,
        ptrs: [u64; 4],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees CPU tensors of the grid's lengths.
        let code = unsafe {
            if kind == Kind::BFloat16 {
                host_fwd::<Bf16>(ptrs, v, grid)
            } else {
                host_fwd::<f32>(ptrs, v, grid)
            }
        };
        super::host::status(code, grid)
    }

    unsafe fn launch_bwd(
        &self,
        kind: Kind,
        ptrs: [u64; 5],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees CPU tensors of the grid's lengths.
        let code = unsafe {
            if kind == Kind::BFloat16 {
                host_bwd::<Bf16>(ptrs, v, grid)
            } else {
                host_bwd::<f32>(ptrs, v, grid)
            }
        };
        super::host::status(code, grid)
    }
}
