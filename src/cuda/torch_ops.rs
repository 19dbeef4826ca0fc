//! The kernels on libtorch tensors (features `cuda` and `torch`): token
//! log-probs ([C-TOKEN-LOGPROB]), pair losses ([C-P3O-V1], [C-P3O-V2],
//! [C-DPO]), sequence sums ([C-SEQ-LOGPROB]) and GAE ([C-GAE]), with one set
//! of tensor checks for both places they run: CUDA tensors on the GPU
//! (device pointers from tch, launched on the legacy default stream, which
//! is libtorch's current stream unless a program selects another one, so
//! the launches are ordered with the tch ops around them) and CPU tensors
//! with the host execution of the same sources (`super::host`). Outputs are
//! allocated by libtorch.

use cudarc::driver::PushKernelArg;
use tch::{Device, Kind, Tensor};

use super::host::{Host, HostLogitElement, ffi, pair_entry};
use super::launch::{self, Grid, check};
use super::ops::{Bf16, LogitElement, PairInputs, PairOutputs, pair_kernel};
use super::{CudaError, Gpu};
use crate::reference::Algorithm;

/// The kernels on the tensors of one device.
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

    /// Launches the pair kernel of `alg` (P3O-V1, P3O-V2 or DPO).
    ///
    /// # Safety
    /// `ptrs` are the data of (lp1, lp2, old1, old2, ref1, ref2, r1, r2,
    /// loss, g1, g2): contiguous tensors on [`Self::device`] of `n` elements
    /// (float64 for the rewards, float32 for the rest), as checked by
    /// `PairInputs::grid`, alive until the launch has run.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_pairs(
        &self,
        alg: Algorithm,
        ptrs: [u64; 11],
        beta: f64,
        epsilon: f64,
        n: i32,
        grid: Grid,
    ) -> Result<(), CudaError>;

    /// Launches `masked_seq_sum`.
    ///
    /// # Safety
    /// `ptrs` are the data of (a, c, mask, out), `c` being 0 for "absent":
    /// contiguous float32 tensors on [`Self::device`], `[B, T]` for the
    /// inputs and `[B]` for `out`, as `grid` was computed from by
    /// `launch::seq_sum`, alive until the launch has run.
    unsafe fn launch_seq_sum(
        &self,
        ptrs: [u64; 4],
        t_len: i32,
        grid: Grid,
    ) -> Result<(), CudaError>;

    /// Launches `gae_reverse_scan`.
    ///
    /// # Safety
    /// `ptrs` are the data of (rewards, values, mask, adv, ret): contiguous
    /// float32 `[B, T]` tensors on [`Self::device`], as `grid` and `batch`
    /// were computed from by `launch::gae`, alive until the launch has run.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch_gae(
        &self,
        ptrs: [u64; 5],
        gamma: f64,
        lambda: f64,
        batch: i32,
        t_len: i32,
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

    /// [C-P3O-V1], [C-P3O-V2] or [C-DPO] per pair on tensors of `P`
    /// elements (float32 log-probs, float64 rewards): the per-pair loss and
    /// its derivatives with respect to `lp1` and `lp2`, float32.
    fn pair_loss_tensor(
        &self,
        alg: Algorithm,
        x: &PairInputs<Tensor, Tensor>,
        beta: f64,
        epsilon: f64,
    ) -> Result<PairOutputs<Tensor>, CudaError> {
        let logprobs = [&x.lp, &x.lp_old, &x.lp_ref];
        for t in logprobs.iter().flat_map(|pair| pair.iter()) {
            self.check_tensor("a sequence log-prob", t, &[Kind::Float])?;
        }
        for t in &x.reward {
            self.check_tensor("a reward", t, &[Kind::Double])?;
        }
        let n = x.lp[0].numel() as i64;
        let empty = || Tensor::empty([n], (Kind::Float, self.device()));
        let out = PairOutputs {
            loss: empty(),
            grad: [empty(), empty()],
        };
        let (grid, n32) = x.grid(&out, Tensor::numel, Tensor::numel)?;
        let ptrs = [
            &x.lp[0],
            &x.lp[1],
            &x.lp_old[0],
            &x.lp_old[1],
            &x.lp_ref[0],
            &x.lp_ref[1],
            &x.reward[0],
            &x.reward[1],
            &out.loss,
            &out.grad[0],
            &out.grad[1],
        ]
        .map(|t| t.data_ptr() as u64);
        // SAFETY: every tensor is contiguous on this device with the dtype
        // checked above (or allocated here) and `n` elements
        // (`PairInputs::grid`); all outlive the launch.
        unsafe { self.launch_pairs(alg, ptrs, beta, epsilon, n32, grid) }?;
        Ok(out)
    }

    /// `(B, T)` of float32 `[B, T]` tensors of one shape, each checked.
    fn rows_shape(&self, tensors: &[(&str, &Tensor)]) -> Result<(i64, i64), CudaError> {
        let size = tensors[0].1.size();
        check(size.len() == 2, || {
            format!("{} must be [B, T], got {size:?}", tensors[0].0)
        })?;
        for &(name, t) in tensors {
            self.check_tensor(name, t, &[Kind::Float])?;
            check(t.size() == size, || {
                format!("{name} is {:?}, {} is {size:?}", t.size(), tensors[0].0)
            })?;
        }
        Ok((size[0], size[1]))
    }

    /// [C-SEQ-LOGPROB] on tensors: `out[b] = sum_t mask (a - c)` over
    /// float32 `[B, T]` tensors, `c` absent meaning zero -> `[B]`, float32.
    /// No autograd: the sums of log-probs that need no gradient (the
    /// reference policy's, for instance).
    fn masked_seq_sum_tensor(
        &self,
        a: &Tensor,
        c: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor, CudaError> {
        let mut inputs = vec![("a", a), ("mask", mask)];
        inputs.extend(c.map(|c| ("c", c)));
        let (b, t) = self.rows_shape(&inputs)?;
        if b == 0 || t == 0 {
            return Ok(Tensor::zeros([b], (Kind::Float, self.device())));
        }
        let out = Tensor::empty([b], (Kind::Float, self.device()));
        let grid = launch::seq_sum(
            a.numel(),
            c.map(Tensor::numel),
            mask.numel(),
            t as usize,
            out.numel(),
        )?;
        let ptr = |t: &Tensor| t.data_ptr() as u64;
        let ptrs = [ptr(a), c.map_or(0, ptr), ptr(mask), ptr(&out)];
        // SAFETY: the inputs are contiguous float32 [B, T] tensors on this
        // device (checked above), `out` is allocated here with B elements,
        // `launch::seq_sum` checked the lengths (T fits an i32); all outlive
        // the launch.
        unsafe { self.launch_seq_sum(ptrs, t as i32, grid) }?;
        Ok(out)
    }

    /// [C-GAE] on float32 `[B, T]` tensors of rewards, values and mask ->
    /// (advantages, value targets), float32 `[B, T]`. No autograd.
    fn gae_tensor(
        &self,
        rewards: &Tensor,
        values: &Tensor,
        mask: &Tensor,
        gamma: f64,
        lambda: f64,
    ) -> Result<(Tensor, Tensor), CudaError> {
        let (b, t) =
            self.rows_shape(&[("rewards", rewards), ("values", values), ("mask", mask)])?;
        if b == 0 || t == 0 {
            let zeros = || Tensor::zeros([b, t], (Kind::Float, self.device()));
            return Ok((zeros(), zeros()));
        }
        let adv = Tensor::empty([b, t], (Kind::Float, self.device()));
        let ret = Tensor::empty([b, t], (Kind::Float, self.device()));
        let lens = [values, mask, &adv, &ret].map(Tensor::numel);
        let (grid, b32) = launch::gae(rewards.numel(), t as usize, &lens)?;
        let ptrs = [rewards, values, mask, &adv, &ret].map(|t| t.data_ptr() as u64);
        // SAFETY: every tensor is a contiguous float32 [B, T] tensor on this
        // device (checked above, or allocated here), as `launch::gae`
        // checked (T fits an i32); all outlive the launch.
        unsafe { self.launch_gae(ptrs, gamma, lambda, b32, t as i32, grid) }?;
        Ok((adv, ret))
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
    /// Launches kernel `name` with the pointer arguments `ptrs`, then one
    /// `int` (a token kernel's V, the sequence sum's T), on the stream that
    /// libtorch also uses.
    ///
    /// # Safety
    /// `ptrs` and `last` are the kernel's arguments in its order: device
    /// tensors of the lengths `grid` was computed from, alive until the
    /// launch has run (no other op touches them meanwhile, as libtorch's
    /// ops run on the same stream).
    unsafe fn launch_ptrs_then_int(
        &self,
        name: &str,
        ptrs: &[u64],
        last: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        let mut launch = self.stream.launch_builder(self.kernels.get(name));
        for p in ptrs {
            launch.arg(p);
        }
        launch.arg(&last);
        // SAFETY: the caller guarantees the arguments and the buffers.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
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
        // SAFETY: (logits, targets, logp, lse) then v is the forward
        // kernel's signature; the caller guarantees the rest.
        unsafe { self.launch_ptrs_then_int(kernel_for(kind).0, &ptrs, v, grid) }
    }

    unsafe fn launch_bwd(
        &self,
        kind: Kind,
        ptrs: [u64; 5],
        v: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        // SAFETY: (logits, targets, lse, grad_logp, grad_logits) then v is
        // the backward kernel's signature; the caller guarantees the rest.
        unsafe { self.launch_ptrs_then_int(kernel_for(kind).1, &ptrs, v, grid) }
    }

    unsafe fn launch_pairs(
        &self,
        alg: Algorithm,
        ptrs: [u64; 11],
        beta: f64,
        epsilon: f64,
        n: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        let mut launch = self
            .stream
            .launch_builder(self.kernels.get(pair_kernel(alg)?));
        for p in &ptrs[..8] {
            launch.arg(p);
        }
        launch.arg(&beta).arg(&epsilon);
        for p in &ptrs[8..] {
            launch.arg(p);
        }
        launch.arg(&n);
        // SAFETY: arguments match PAIR_ARGS in kernels/pair_losses.cu (eight
        // inputs, beta, epsilon, three outputs, n); the caller guarantees
        // device tensors of n elements, alive until the launch has run on
        // libtorch's stream; threads past n return at once.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }

    unsafe fn launch_seq_sum(
        &self,
        ptrs: [u64; 4],
        t_len: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        // SAFETY: (a, c, mask, out) then T is masked_seq_sum's signature,
        // and the kernel reads a null `c` as absent; the caller guarantees
        // the rest.
        unsafe { self.launch_ptrs_then_int("masked_seq_sum", &ptrs, t_len, grid) }
    }

    unsafe fn launch_gae(
        &self,
        ptrs: [u64; 5],
        gamma: f64,
        lambda: f64,
        batch: i32,
        t_len: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        let mut launch = self
            .stream
            .launch_builder(self.kernels.get("gae_reverse_scan"));
        for p in &ptrs {
            launch.arg(p);
        }
        launch.arg(&gamma).arg(&lambda).arg(&batch).arg(&t_len);
        // SAFETY: arguments match gae_reverse_scan (rewards, values, mask,
        // adv, ret, gamma, lambda, B, T); the caller guarantees device
        // tensors of B rows of T, alive until the launch has run on
        // libtorch's stream; threads past B return at once.
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

    unsafe fn launch_pairs(
        &self,
        alg: Algorithm,
        ptrs: [u64; 11],
        beta: f64,
        epsilon: f64,
        n: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        let entry = pair_entry(alg)?;
        let input = |i: usize| ptrs[i] as *const f32;
        let output = |i: usize| ptrs[i] as *mut f32;
        // SAFETY: the caller guarantees CPU tensors of n elements with the
        // dtypes of PAIR_ARGS; the call returns after every thread has
        // finished.
        let code = unsafe {
            entry(
                input(0),
                input(1),
                input(2),
                input(3),
                input(4),
                input(5),
                ptrs[6] as *const f64,
                ptrs[7] as *const f64,
                beta,
                epsilon,
                output(8),
                output(9),
                output(10),
                n,
                grid.blocks,
                grid.threads,
            )
        };
        super::host::status(code, grid)
    }

    unsafe fn launch_seq_sum(
        &self,
        ptrs: [u64; 4],
        t_len: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees CPU tensors of B rows of T (and B
        // sums); a null `c` is the kernel's "absent"; the call returns after
        // every thread has finished.
        let code = unsafe {
            ffi::p3o_host_masked_seq_sum(
                ptrs[0] as *const f32,
                ptrs[1] as *const f32,
                ptrs[2] as *const f32,
                ptrs[3] as *mut f32,
                t_len,
                grid.blocks,
                grid.threads,
            )
        };
        super::host::status(code, grid)
    }

    unsafe fn launch_gae(
        &self,
        ptrs: [u64; 5],
        gamma: f64,
        lambda: f64,
        batch: i32,
        t_len: i32,
        grid: Grid,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees CPU tensors of B rows of T; threads
        // past B return at once; the call returns after every thread has
        // finished.
        let code = unsafe {
            ffi::p3o_host_gae_reverse_scan(
                ptrs[0] as *const f32,
                ptrs[1] as *const f32,
                ptrs[2] as *const f32,
                ptrs[3] as *mut f32,
                ptrs[4] as *mut f32,
                gamma,
                lambda,
                batch,
                t_len,
                grid.blocks,
                grid.threads,
            )
        };
        super::host::status(code, grid)
    }
}
