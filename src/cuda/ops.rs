//! Launchers of the kernels on device buffers, with their shape checks.

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits};

use super::launch;
use super::{CudaError, Gpu};
use crate::reference::Algorithm;

/// A bfloat16 value as its raw bits (the upper half of a float32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

// SAFETY: `Bf16` is a `repr(transparent)` `u16`: plain bits, valid for any
// value, including all zeros, with the layout the kernels read.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: as above; all-zero bits are the bf16 value +0.
unsafe impl ValidAsZeroBits for Bf16 {}

impl Bf16 {
    /// Rounds to nearest even (finite inputs).
    pub fn from_f32(f: f32) -> Bf16 {
        let u = f.to_bits();
        Bf16(((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16)
    }

    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// Element types of a logits matrix that the token kernels accept.
pub trait LogitElement: DeviceRepr + ValidAsZeroBits + Copy {
    const FWD: &'static str;
    const BWD: &'static str;
    fn to_f64(self) -> f64;
}

impl LogitElement for f32 {
    const FWD: &'static str = "token_logprob_fwd_f32";
    const BWD: &'static str = "token_logprob_bwd_f32";
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl LogitElement for Bf16 {
    const FWD: &'static str = "token_logprob_fwd_bf16";
    const BWD: &'static str = "token_logprob_bwd_bf16";
    fn to_f64(self) -> f64 {
        f64::from(self.to_f32())
    }
}

/// The inputs of a batch of `n` pairs: six sequence log-probs and two
/// float64 rewards per pair, in device buffers (or, for `host`, vectors).
#[derive(Clone, Debug, PartialEq)]
pub struct PairInputs<F = CudaSlice<f32>, D = CudaSlice<f64>> {
    pub lp: [F; 2],
    pub lp_old: [F; 2],
    pub lp_ref: [F; 2],
    pub reward: [D; 2],
}

/// Per-pair loss and `d loss / d lp1`, `d loss / d lp2`.
pub struct PairOutputs<F = CudaSlice<f32>> {
    pub loss: F,
    pub grad: [F; 2],
}

impl<F, D> PairInputs<F, D> {
    /// The launch over these pairs writing `out`, after checking that every
    /// buffer holds the same number of pairs.
    pub(crate) fn grid(
        &self,
        out: &PairOutputs<F>,
        len: impl Fn(&F) -> usize,
        len_d: impl Fn(&D) -> usize,
    ) -> Result<(launch::Grid, i32), CudaError> {
        let lens = [
            &self.lp[1],
            &self.lp_old[0],
            &self.lp_old[1],
            &self.lp_ref[0],
            &self.lp_ref[1],
            &out.loss,
            &out.grad[0],
            &out.grad[1],
        ]
        .map(&len);
        let rewards = self.reward.each_ref().map(len_d);
        launch::pairs(len(&self.lp[0]), &[&lens[..], &rewards[..]].concat())
    }
}

/// The pair kernel of `alg`, if it has one.
pub(crate) fn pair_kernel(alg: Algorithm) -> Result<&'static str, CudaError> {
    match alg {
        Algorithm::P3oV1 => Ok("pair_loss_p3o_v1"),
        Algorithm::P3oV2 => Ok("pair_loss_p3o_v2"),
        Algorithm::Dpo => Ok("pair_loss_dpo"),
        other => Err(CudaError::Input(format!("no pair kernel for {other}"))),
    }
}

impl Gpu {
    /// [C-TOKEN-LOGPROB] forward: `logp[n]` and the log-sum-exp of an
    /// `[N, V]` row-major logits matrix at `targets[n]`. `lse` holds `2N`
    /// floats, `lse[n] = lse[2n] + lse[2n+1]` (the row maximum and
    /// `log1p` of the rest, see `kernels/token_logprob.cu`).
    pub fn token_logprob_fwd<T: LogitElement>(
        &self,
        logits: &CudaSlice<T>,
        targets: &CudaSlice<i64>,
        v: usize,
        logp: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let grid = launch::token_fwd(logits.len(), v, targets.len(), logp.len(), lse.len())?;
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(self.kernels.get(T::FWD));
        launch.arg(logits).arg(targets).arg(logp).arg(lse).arg(&v32);
        // SAFETY: the argument list matches the kernel's signature (logits,
        // targets, logp, lse, v); every buffer holds the N rows that the grid
        // of N blocks touches, and targets outside 0..V are never read.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }

    /// [C-TOKEN-LOGPROB] backward: `grad_logits = g ([v = t] - softmax)`
    /// from the stored `lse`, one read of the logits and one write.
    pub fn token_logprob_bwd<T: LogitElement>(
        &self,
        logits: &CudaSlice<T>,
        targets: &CudaSlice<i64>,
        lse: &CudaSlice<f32>,
        grad_logp: &CudaSlice<f32>,
        v: usize,
        grad_logits: &mut CudaSlice<T>,
    ) -> Result<(), CudaError> {
        let grid = launch::token_bwd(
            logits.len(),
            v,
            targets.len(),
            lse.len(),
            grad_logp.len(),
            grad_logits.len(),
        )?;
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(self.kernels.get(T::BWD));
        launch
            .arg(logits)
            .arg(targets)
            .arg(lse)
            .arg(grad_logp)
            .arg(grad_logits)
            .arg(&v32);
        // SAFETY: arguments match (logits, targets, lse, grad_logp,
        // grad_logits, v); all buffers were checked to hold N rows of V.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }

    /// [C-SEQ-LOGPROB]: `out[b] = sum_t mask (a - c)` over `[B, T]` inputs,
    /// `c` absent meaning zero.
    pub fn masked_seq_sum(
        &self,
        a: &CudaSlice<f32>,
        c: Option<&CudaSlice<f32>>,
        mask: &CudaSlice<f32>,
        t_len: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let grid = launch::seq_sum(a.len(), c.map(|c| c.len()), mask.len(), t_len, out.len())?;
        let t32 = t_len as i32;
        let null: u64 = 0;
        let mut launch = self
            .stream
            .launch_builder(self.kernels.get("masked_seq_sum"));
        launch.arg(a);
        match c {
            Some(c) => launch.arg(c),
            None => launch.arg(&null),
        };
        launch.arg(mask).arg(out).arg(&t32);
        // SAFETY: arguments match (a, c or a null pointer, mask, out, T);
        // the kernel checks c for null; buffers hold B rows of T.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }

    /// [C-P3O-V1], [C-P3O-V2] or [C-DPO] per pair, with gradients with
    /// respect to `lp1` and `lp2`.
    pub fn pair_loss(
        &self,
        alg: Algorithm,
        x: &PairInputs,
        beta: f64,
        epsilon: f64,
        out: &mut PairOutputs,
    ) -> Result<(), CudaError> {
        let name = pair_kernel(alg)?;
        let (grid, n32) = x.grid(out, CudaSlice::len, CudaSlice::len)?;
        let mut launch = self.stream.launch_builder(self.kernels.get(name));
        launch
            .arg(&x.lp[0])
            .arg(&x.lp[1])
            .arg(&x.lp_old[0])
            .arg(&x.lp_old[1])
            .arg(&x.lp_ref[0])
            .arg(&x.lp_ref[1])
            .arg(&x.reward[0])
            .arg(&x.reward[1])
            .arg(&beta)
            .arg(&epsilon);
        let [g1, g2] = &mut out.grad;
        launch.arg(&mut out.loss).arg(g1).arg(g2).arg(&n32);
        // SAFETY: arguments match PAIR_ARGS in kernels/pair_losses.cu; every
        // buffer holds n elements and threads past n return at once.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }

    /// [C-GAE] over `[B, T]` right-padded rewards, values and mask.
    #[allow(clippy::too_many_arguments)]
    pub fn gae(
        &self,
        rewards: &CudaSlice<f32>,
        values: &CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        gamma: f64,
        lambda: f64,
        t_len: usize,
        adv: &mut CudaSlice<f32>,
        ret: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (grid, b32) = launch::gae(
            rewards.len(),
            t_len,
            &[values.len(), mask.len(), adv.len(), ret.len()],
        )?;
        let t32 = t_len as i32;
        let mut launch = self
            .stream
            .launch_builder(self.kernels.get("gae_reverse_scan"));
        launch
            .arg(rewards)
            .arg(values)
            .arg(mask)
            .arg(adv)
            .arg(ret)
            .arg(&gamma)
            .arg(&lambda)
            .arg(&b32)
            .arg(&t32);
        // SAFETY: arguments match gae_reverse_scan; threads past B return.
        unsafe { launch.launch(grid.into()) }?;
        Ok(())
    }
}
