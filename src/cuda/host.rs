//! The kernels of `kernels/*.cu` run on the CPU, for differential tests on
//! machines with no GPU. The build script compiles the same sources as C++
//! with `kernels/host/simt.h`, which runs every CUDA thread of a block as an
//! OS thread, `__syncthreads()` as a barrier and warp shuffles through a
//! per-warp buffer; so the kernels' indexing, alignment handling and block
//! reductions run as written, over the grids of `launch` that the device
//! launchers use.
//!
//! What this does not check: NVRTC's code generation, the device's math
//! library (last-bit differences in `exp2f`, `expm1f`, `log1pf`), the
//! cudarc launch calls of `ops` and `torch_ops`, and speed: a block with a
//! reduction costs about 10 ms here. The GPU tests remain the word on those.

use std::ffi::c_int;

use super::CudaError;
use super::launch::{self, Grid};
use super::ops::{Bf16, LogitElement, PairInputs, PairOutputs};
use crate::reference::Algorithm;

pub(crate) mod ffi {
    use std::ffi::c_int;

    use crate::cuda::ops::Bf16;

    /// The parameters of `PAIR_ARGS` (kernels/pair_losses.cu), then the grid.
    pub(crate) type PairEntry = unsafe extern "C" fn(
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f64,
        *const f64,
        f64,
        f64,
        *mut f32,
        *mut f32,
        *mut f32,
        c_int,
        u32,
        u32,
    ) -> c_int;

    /// Declares the pair kernels' entry points (one signature, `PAIR_ARGS`).
    macro_rules! pair_entries {
        ($($name:ident),*) => {
            unsafe extern "C" {
                $(pub fn $name(
                    lp1: *const f32,
                    lp2: *const f32,
                    old1: *const f32,
                    old2: *const f32,
                    ref1: *const f32,
                    ref2: *const f32,
                    r1: *const f64,
                    r2: *const f64,
                    beta: f64,
                    eps: f64,
                    loss: *mut f32,
                    g1: *mut f32,
                    g2: *mut f32,
                    n: c_int,
                    blocks: u32,
                    threads: u32,
                ) -> c_int;)*
            }
        };
    }
    pair_entries!(
        p3o_host_pair_loss_p3o_v1,
        p3o_host_pair_loss_p3o_v2,
        p3o_host_pair_loss_dpo
    );

    // The entry points of kernels/host/kernels.cpp: each kernel's arguments,
    // then the block count and block size; 0 on success.
    unsafe extern "C" {
        pub fn p3o_host_token_logprob_fwd_f32(
            logits: *const f32,
            targets: *const i64,
            logp: *mut f32,
            lse: *mut f32,
            v: c_int,
            blocks: u32,
            threads: u32,
        ) -> c_int;
        pub fn p3o_host_token_logprob_fwd_bf16(
            logits: *const Bf16,
            targets: *const i64,
            logp: *mut f32,
            lse: *mut f32,
            v: c_int,
            blocks: u32,
            threads: u32,
        ) -> c_int;
        pub fn p3o_host_token_logprob_bwd_f32(
            logits: *const f32,
            targets: *const i64,
            lse: *const f32,
            grad_logp: *const f32,
            grad_logits: *mut f32,
            v: c_int,
            blocks: u32,
            threads: u32,
        ) -> c_int;
        pub fn p3o_host_token_logprob_bwd_bf16(
            logits: *const Bf16,
            targets: *const i64,
            lse: *const f32,
            grad_logp: *const f32,
            grad_logits: *mut Bf16,
            v: c_int,
            blocks: u32,
            threads: u32,
        ) -> c_int;
        pub fn p3o_host_masked_seq_sum(
            a: *const f32,
            c: *const f32,
            mask: *const f32,
            out: *mut f32,
            t_len: c_int,
            blocks: u32,
            threads: u32,
        ) -> c_int;
        pub fn p3o_host_gae_reverse_scan(
            rewards: *const f32,
            values: *const f32,
            mask: *const f32,
            adv: *mut f32,
            ret: *mut f32,
            gamma: f64,
            lambda: f64,
            batch: c_int,
            t_len: c_int,
            blocks: u32,
            threads: u32,
        ) -> c_int;
    }
}

/// The logits element types, with their host entry points.
pub trait HostLogitElement: LogitElement {
    /// # Safety
    /// The token forward kernel's contract: `logits` holds `blocks` rows of
    /// `v`, `targets` and `logp` `blocks` elements, `lse` twice that.
    unsafe fn fwd(
        logits: *const Self,
        targets: *const i64,
        logp: *mut f32,
        lse: *mut f32,
        v: c_int,
        grid: Grid,
    ) -> c_int;

    /// # Safety
    /// The token backward kernel's contract: `logits` and `grad_logits` hold
    /// `blocks` rows of `v`; `targets`, `grad_logp` `blocks` elements; `lse`
    /// twice that.
    unsafe fn bwd(
        logits: *const Self,
        targets: *const i64,
        lse: *const f32,
        grad_logp: *const f32,
        grad_logits: *mut Self,
        v: c_int,
        grid: Grid,
    ) -> c_int;
}

/// `HostLogitElement` for `$t` through its two entry points.
macro_rules! host_logit_element {
    ($t:ty, $fwd:ident, $bwd:ident) => {
        impl HostLogitElement for $t {
            unsafe fn fwd(
                x: *const $t,
                t: *const i64,
                logp: *mut f32,
                lse: *mut f32,
                v: c_int,
                g: Grid,
            ) -> c_int {
                // SAFETY: the caller's contract is the kernel's.
                unsafe { ffi::$fwd(x, t, logp, lse, v, g.blocks, g.threads) }
            }

            unsafe fn bwd(
                x: *const $t,
                t: *const i64,
                lse: *const f32,
                gl: *const f32,
                out: *mut $t,
                v: c_int,
                g: Grid,
            ) -> c_int {
                // SAFETY: the caller's contract is the kernel's.
                unsafe { ffi::$bwd(x, t, lse, gl, out, v, g.blocks, g.threads) }
            }
        }
    };
}

host_logit_element!(
    f32,
    p3o_host_token_logprob_fwd_f32,
    p3o_host_token_logprob_bwd_f32
);
host_logit_element!(
    Bf16,
    p3o_host_token_logprob_fwd_bf16,
    p3o_host_token_logprob_bwd_bf16
);

/// The host entry point of the pair kernel of `alg`.
pub(crate) fn pair_entry(alg: Algorithm) -> Result<ffi::PairEntry, CudaError> {
    match alg {
        Algorithm::P3oV1 => Ok(ffi::p3o_host_pair_loss_p3o_v1),
        Algorithm::P3oV2 => Ok(ffi::p3o_host_pair_loss_p3o_v2),
        Algorithm::Dpo => Ok(ffi::p3o_host_pair_loss_dpo),
        other => Err(CudaError::Input(format!("no pair kernel for {other}"))),
    }
}

/// The entry point's status as a result.
pub(crate) fn status(code: c_int, grid: Grid) -> Result<(), CudaError> {
    launch::check(code == 0, || {
        format!(
            "host execution cannot run blocks of {} threads",
            grid.threads
        )
    })
}

/// The kernels on the CPU, with the device launchers' signatures on host
/// slices (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

impl Host {
    /// [C-TOKEN-LOGPROB] forward, as `Gpu::token_logprob_fwd`.
    pub fn token_logprob_fwd<T: HostLogitElement>(
        &self,
        logits: &[T],
        targets: &[i64],
        v: usize,
        logp: &mut [f32],
        lse: &mut [f32],
    ) -> Result<(), CudaError> {
        let grid = launch::token_fwd(logits.len(), v, targets.len(), logp.len(), lse.len())?;
        // SAFETY: `launch::token_fwd` checked the lengths against the grid
        // of one block per row (v fits an i32); the slices outlive the call,
        // which returns after every thread has finished.
        let code = unsafe {
            T::fwd(
                logits.as_ptr(),
                targets.as_ptr(),
                logp.as_mut_ptr(),
                lse.as_mut_ptr(),
                v as c_int,
                grid,
            )
        };
        status(code, grid)
    }

    /// [C-TOKEN-LOGPROB] backward, as `Gpu::token_logprob_bwd`.
    pub fn token_logprob_bwd<T: HostLogitElement>(
        &self,
        logits: &[T],
        targets: &[i64],
        lse: &[f32],
        grad_logp: &[f32],
        v: usize,
        grad_logits: &mut [T],
    ) -> Result<(), CudaError> {
        let grid = launch::token_bwd(
            logits.len(),
            v,
            targets.len(),
            lse.len(),
            grad_logp.len(),
            grad_logits.len(),
        )?;
        // SAFETY: lengths checked by `launch::token_bwd`; the call returns
        // after every thread has finished.
        let code = unsafe {
            T::bwd(
                logits.as_ptr(),
                targets.as_ptr(),
                lse.as_ptr(),
                grad_logp.as_ptr(),
                grad_logits.as_mut_ptr(),
                v as c_int,
                grid,
            )
        };
        status(code, grid)
    }

    /// [C-SEQ-LOGPROB], as `Gpu::masked_seq_sum`.
    pub fn masked_seq_sum(
        &self,
        a: &[f32],
        c: Option<&[f32]>,
        mask: &[f32],
        t_len: usize,
        out: &mut [f32],
    ) -> Result<(), CudaError> {
        let grid = launch::seq_sum(a.len(), c.map(<[f32]>::len), mask.len(), t_len, out.len())?;
        // SAFETY: lengths checked by `launch::seq_sum` (t_len fits an i32);
        // a null `c` is the kernel's "absent"; the call returns after every
        // thread has finished.
        let code = unsafe {
            ffi::p3o_host_masked_seq_sum(
                a.as_ptr(),
                c.map_or(std::ptr::null(), <[f32]>::as_ptr),
                mask.as_ptr(),
                out.as_mut_ptr(),
                t_len as c_int,
                grid.blocks,
                grid.threads,
            )
        };
        status(code, grid)
    }

    /// [C-P3O-V1], [C-P3O-V2] or [C-DPO] per pair, as `Gpu::pair_loss`.
    pub fn pair_loss(
        &self,
        alg: Algorithm,
        x: &PairInputs<Vec<f32>, Vec<f64>>,
        beta: f64,
        epsilon: f64,
        out: &mut PairOutputs<Vec<f32>>,
    ) -> Result<(), CudaError> {
        let entry = pair_entry(alg)?;
        let (grid, n) = x.grid(out, Vec::len, Vec::len)?;
        let [g1, g2] = &mut out.grad;
        // SAFETY: every buffer was checked to hold n pairs; threads past n
        // return at once; the call returns after every thread has finished.
        let code = unsafe {
            entry(
                x.lp[0].as_ptr(),
                x.lp[1].as_ptr(),
                x.lp_old[0].as_ptr(),
                x.lp_old[1].as_ptr(),
                x.lp_ref[0].as_ptr(),
                x.lp_ref[1].as_ptr(),
                x.reward[0].as_ptr(),
                x.reward[1].as_ptr(),
                beta,
                epsilon,
                out.loss.as_mut_ptr(),
                g1.as_mut_ptr(),
                g2.as_mut_ptr(),
                n,
                grid.blocks,
                grid.threads,
            )
        };
        status(code, grid)
    }

    /// [C-GAE], as `Gpu::gae`.
    #[allow(clippy::too_many_arguments)]
    pub fn gae(
        &self,
        rewards: &[f32],
        values: &[f32],
        mask: &[f32],
        gamma: f64,
        lambda: f64,
        t_len: usize,
        adv: &mut [f32],
        ret: &mut [f32],
    ) -> Result<(), CudaError> {
        let (grid, b) = launch::gae(
            rewards.len(),
            t_len,
            &[values.len(), mask.len(), adv.len(), ret.len()],
        )?;
        // SAFETY: every buffer was checked to hold B rows of T; threads past
        // B return at once; the call returns after every thread has finished.
        let code = unsafe {
            ffi::p3o_host_gae_reverse_scan(
                rewards.as_ptr(),
                values.as_ptr(),
                mask.as_ptr(),
                adv.as_mut_ptr(),
                ret.as_mut_ptr(),
                gamma,
                lambda,
                b,
                t_len as c_int,
                grid.blocks,
                grid.threads,
            )
        };
        status(code, grid)
    }
}
