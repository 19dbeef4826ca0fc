//! Launchers of the kernels on device buffers, with their shape checks.

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};

use super::{CudaError, Gpu};
use crate::reference::Algorithm;

/// Threads per block of each kernel family (the `*_BLOCK` macros in
/// `kernels/`).
pub(super) const TOKEN_BLOCK: u32 = 256;
const SEQ_BLOCK: u32 = 128;
const PAIR_BLOCK: u32 = 256;
const GAE_BLOCK: u32 = 128;

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
/// float64 rewards per pair.
pub struct PairInputs {
    pub lp: [CudaSlice<f32>; 2],
    pub lp_old: [CudaSlice<f32>; 2],
    pub lp_ref: [CudaSlice<f32>; 2],
    pub reward: [CudaSlice<f64>; 2],
}

/// Per-pair loss and `d loss / d lp1`, `d loss / d lp2`.
pub struct PairOutputs {
    pub loss: CudaSlice<f32>,
    pub grad: [CudaSlice<f32>; 2],
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), CudaError> {
    if cond {
        Ok(())
    } else {
        Err(CudaError::Input(what()))
    }
}

pub(super) fn grid(blocks: usize, threads: u32) -> Result<LaunchConfig, CudaError> {
    check(blocks >= 1 && blocks <= i32::MAX as usize, || {
        format!("{blocks} blocks do not fit one launch")
    })?;
    Ok(LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn rows(len: usize, v: usize) -> Result<usize, CudaError> {
    check(v >= 1 && v <= i32::MAX as usize, || {
        format!("vocabulary size {v} out of range")
    })?;
    check(len.is_multiple_of(v) && len > 0, || {
        format!("logits length {len} is not a positive multiple of V = {v}")
    })?;
    Ok(len / v)
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
        let n = rows(logits.len(), v)?;
        check(
            targets.len() == n && logp.len() == n && lse.len() == 2 * n,
            || {
                format!(
                    "N = {n}: targets {}, logp {}, lse {}",
                    targets.len(),
                    logp.len(),
                    lse.len()
                )
            },
        )?;
        let v32 = v as i32;
        let mut launch = self.stream.launch_builder(self.kernels.get(T::FWD));
        launch.arg(logits).arg(targets).arg(logp).arg(lse).arg(&v32);
        // SAFETY: the argument list matches the kernel's signature (logits,
        // targets, logp, lse, v); every buffer holds the N rows that the grid
        // of N blocks touches, and targets outside 0..V are never read.
        unsafe { launch.launch(grid(n, TOKEN_BLOCK)?) }?;
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
        let n = rows(logits.len(), v)?;
        check(
            targets.len() == n
                && lse.len() == 2 * n
                && grad_logp.len() == n
                && grad_logits.len() == logits.len(),
            || {
                format!(
                    "N = {n}, V = {v}: targets {}, lse {}, grad_logp {}, grad_logits {}",
                    targets.len(),
                    lse.len(),
                    grad_logp.len(),
                    grad_logits.len()
                )
            },
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
        unsafe { launch.launch(grid(n, TOKEN_BLOCK)?) }?;
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
        let b = rows(a.len(), t_len)?;
        check(
            mask.len() == a.len() && out.len() == b && c.is_none_or(|c| c.len() == a.len()),
            || {
                format!(
                    "B = {b}, T = {t_len}: mask {}, out {}",
                    mask.len(),
                    out.len()
                )
            },
        )?;
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
        unsafe { launch.launch(grid(b, SEQ_BLOCK)?) }?;
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
        let name = match alg {
            Algorithm::P3oV1 => "pair_loss_p3o_v1",
            Algorithm::P3oV2 => "pair_loss_p3o_v2",
            Algorithm::Dpo => "pair_loss_dpo",
            other => return Err(CudaError::Input(format!("no pair kernel for {other}"))),
        };
        let n = x.lp[0].len();
        let lens = [
            &x.lp[1],
            &x.lp_old[0],
            &x.lp_old[1],
            &x.lp_ref[0],
            &x.lp_ref[1],
            &out.loss,
            &out.grad[0],
            &out.grad[1],
        ]
        .map(|s| s.len());
        check(
            n >= 1 && lens.iter().all(|&l| l == n) && x.reward.iter().all(|r| r.len() == n),
            || format!("pair buffers differ in length: {n} vs {lens:?}"),
        )?;
        let n32 = i32::try_from(n)
            .map_err(|_| CudaError::Input(format!("{n} pairs do not fit one launch")))?;
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
        unsafe { launch.launch(grid(n.div_ceil(PAIR_BLOCK as usize), PAIR_BLOCK)?) }?;
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
        let b = rows(rewards.len(), t_len)?;
        let n = rewards.len();
        check(
            values.len() == n && mask.len() == n && adv.len() == n && ret.len() == n,
            || format!("B = {b}, T = {t_len}: every buffer must hold {n} elements"),
        )?;
        let (b32, t32) = (b as i32, t_len as i32);
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
        unsafe { launch.launch(grid(b.div_ceil(GAE_BLOCK as usize), GAE_BLOCK)?) }?;
        Ok(())
    }
}
