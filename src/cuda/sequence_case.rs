//! Cases of the float64 kernels (pair losses, sequence sums, GAE) decoded
//! from arbitrary bytes: the input of the fuzz target
//! `host_sequence_kernels` (a differential target: their host execution and
//! the float64 reference agree to [C-F64-KERNELS]) and of the replay of its
//! seeds and crash files in `tests/cuda_kernels.rs`.
//!
//! A case stays inside [C-F64-KERNELS]'s domain. Its values come from small
//! palettes (raw float bits folded into the domain, short dyadic steps,
//! zero, a value and its negation), so that exact cancellation, clipping on
//! and off the band's edge and zero rewards are common.

use arbitrary::{Result, Unstructured};

use cudarc::driver::{CudaSlice, DeviceRepr};

use super::compare::{CaseFailure, GaeOutputs, check_gae, check_pairs, check_seq_sums};
use super::host::Host;
use super::ops::{PairInputs, PairOutputs};
use super::{CudaError, Gpu};
use crate::reference::{Algorithm, Hyper};

/// Sequence log-probs: magnitude at most `2^16`.
const MAX_LOGPROB: f32 = 65_536.0;
/// `|lp - lp_old|` of the steps drawn (rounding to float32 may add a little;
/// the domain's bound is 17).
const MAX_STEP: f32 = 16.0;
/// Pair rewards: magnitude at most `2^24`.
const MAX_REWARD: f64 = 16_777_216.0;
/// `beta` and a finite `epsilon`: at most 64.
const MAX_COEF: f64 = 64.0;
/// Sequence-sum summands: magnitude at most `2^64`.
const MAX_SUMMAND: f32 = 18_446_744_073_709_551_616.0;
/// GAE rewards and values: magnitude at most `2^32`.
const MAX_GAE: f32 = 4_294_967_296.0;
/// The longest sequence sum and GAE scan ([`crate::tolerance::F64_SUMMANDS`]
/// is sized for them).
const MAX_SUM_LEN: usize = 4096;
const MAX_SCAN_LEN: usize = 2048;

/// One decoded case.
#[derive(Clone, Debug, PartialEq)]
pub enum SequenceCase {
    /// Pairs through the pair kernel of `alg` (P3O-V1, P3O-V2, DPO).
    Pairs {
        alg: Algorithm,
        beta: f64,
        epsilon: f64,
        x: PairInputs<Vec<f32>, Vec<f64>>,
    },
    /// Masked sums of `[B, t_len]` summands, with a subtrahend `c` or not.
    SeqSum {
        t_len: usize,
        a: Vec<f32>,
        c: Option<Vec<f32>>,
        mask: Vec<f32>,
    },
    /// GAE over `[B, t_len]` with right-padded masks.
    Gae {
        t_len: usize,
        rewards: Vec<f32>,
        values: Vec<f32>,
        mask: Vec<f32>,
        gamma: f64,
        lambda: f64,
    },
}

impl SequenceCase {
    /// Decodes `data`. Running out of bytes is not an error: the rest of the
    /// case takes default values (and palettes repeat their first entry).
    pub fn from_bytes(data: &[u8]) -> Result<SequenceCase> {
        let mut u = Unstructured::new(data);
        match u.int_in_range(0..=4u8)? {
            0 => pairs(&mut u, Algorithm::P3oV1),
            1 => pairs(&mut u, Algorithm::P3oV2),
            2 => pairs(&mut u, Algorithm::Dpo),
            3 => seq_sum(&mut u),
            _ => gae(&mut u),
        }
    }

    /// Runs the case's kernel on `k` and checks every output against the
    /// reference.
    pub fn check(&self, k: &impl SequenceKernels) -> std::result::Result<(), CaseFailure> {
        let at = |at: String| move |what| CaseFailure::Output { at, what };
        match self {
            SequenceCase::Pairs {
                alg,
                beta,
                epsilon,
                x,
            } => {
                let out = k.pairs(*alg, x, *beta, *epsilon)?;
                let h = Hyper {
                    beta: *beta,
                    epsilon: *epsilon,
                    vf_coef: 1.0,
                    ..Hyper::default()
                };
                check_pairs(*alg, &h, x, &out).map_err(|(i, e)| at(format!("{alg} pair {i}"))(e))
            }
            SequenceCase::SeqSum { t_len, a, c, mask } => {
                let out = k.seq_sum(a, c.as_deref(), mask, *t_len)?;
                check_seq_sums(a, c.as_deref(), mask, *t_len, &out)
                    .map_err(|(b, e)| at(format!("sequence {b}"))(e))
            }
            SequenceCase::Gae {
                t_len,
                rewards,
                values,
                mask,
                gamma,
                lambda,
            } => {
                let (adv, ret) = k.gae(rewards, values, mask, *gamma, *lambda, *t_len)?;
                let out = GaeOutputs {
                    adv: &adv,
                    ret: &ret,
                };
                check_gae((rewards, values, mask), (*gamma, *lambda), *t_len, out)
                    .map_err(|((b, t), e)| at(format!("sequence {b}, token {t}"))(e))
            }
        }
    }

    /// [`Self::check`] on the host execution of the kernels.
    pub fn check_host(&self) -> std::result::Result<(), CaseFailure> {
        self.check(&Host)
    }
}

/// The float64 kernels on host slices, wherever they run; every output is
/// poisoned with NaN before the launch, so that an unwritten one shows.
pub trait SequenceKernels {
    /// [C-P3O-V1], [C-P3O-V2] or [C-DPO] per pair.
    fn pairs(
        &self,
        alg: Algorithm,
        x: &PairInputs<Vec<f32>, Vec<f64>>,
        beta: f64,
        epsilon: f64,
    ) -> std::result::Result<PairOutputs<Vec<f32>>, CudaError>;

    /// [C-SEQ-LOGPROB]: one sum per row of `t_len`.
    fn seq_sum(
        &self,
        a: &[f32],
        c: Option<&[f32]>,
        mask: &[f32],
        t_len: usize,
    ) -> std::result::Result<Vec<f32>, CudaError>;

    /// [C-GAE]: (advantages, value targets).
    fn gae(
        &self,
        r: &[f32],
        v: &[f32],
        m: &[f32],
        gamma: f64,
        lambda: f64,
        t_len: usize,
    ) -> std::result::Result<(Vec<f32>, Vec<f32>), CudaError>;
}

fn nans(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

fn nan_pair_outputs(n: usize) -> PairOutputs<Vec<f32>> {
    PairOutputs {
        loss: nans(n),
        grad: [nans(n), nans(n)],
    }
}

impl SequenceKernels for Host {
    fn pairs(
        &self,
        alg: Algorithm,
        x: &PairInputs<Vec<f32>, Vec<f64>>,
        beta: f64,
        epsilon: f64,
    ) -> std::result::Result<PairOutputs<Vec<f32>>, CudaError> {
        let mut out = nan_pair_outputs(x.lp[0].len());
        self.pair_loss(alg, x, beta, epsilon, &mut out)?;
        Ok(out)
    }

    fn seq_sum(
        &self,
        a: &[f32],
        c: Option<&[f32]>,
        mask: &[f32],
        t_len: usize,
    ) -> std::result::Result<Vec<f32>, CudaError> {
        let mut out = nans(a.len() / t_len.max(1));
        self.masked_seq_sum(a, c, mask, t_len, &mut out)?;
        Ok(out)
    }

    fn gae(
        &self,
        r: &[f32],
        v: &[f32],
        m: &[f32],
        gamma: f64,
        lambda: f64,
        t_len: usize,
    ) -> std::result::Result<(Vec<f32>, Vec<f32>), CudaError> {
        let (mut adv, mut ret) = (nans(r.len()), nans(r.len()));
        Host::gae(self, r, v, m, gamma, lambda, t_len, &mut adv, &mut ret)?;
        Ok((adv, ret))
    }
}

/// Host data on the device, on the GPU's stream.
fn upload<T: DeviceRepr>(gpu: &Gpu, v: &[T]) -> std::result::Result<CudaSlice<T>, CudaError> {
    Ok(gpu.stream.memcpy_stod(v)?)
}

/// The kernels on the device: inputs uploaded, outputs (poisoned on the
/// device) downloaded.
impl SequenceKernels for Gpu {
    fn pairs(
        &self,
        alg: Algorithm,
        x: &PairInputs<Vec<f32>, Vec<f64>>,
        beta: f64,
        epsilon: f64,
    ) -> std::result::Result<PairOutputs<Vec<f32>>, CudaError> {
        let up = |v: &[Vec<f32>; 2]| -> std::result::Result<[CudaSlice<f32>; 2], CudaError> {
            Ok([upload(self, &v[0])?, upload(self, &v[1])?])
        };
        let inputs = PairInputs {
            lp: up(&x.lp)?,
            lp_old: up(&x.lp_old)?,
            lp_ref: up(&x.lp_ref)?,
            reward: [upload(self, &x.reward[0])?, upload(self, &x.reward[1])?],
        };
        let poisoned = nan_pair_outputs(x.lp[0].len());
        let mut out = PairOutputs {
            loss: upload(self, &poisoned.loss)?,
            grad: up(&poisoned.grad)?,
        };
        self.pair_loss(alg, &inputs, beta, epsilon, &mut out)?;
        Ok(PairOutputs {
            loss: self.stream.memcpy_dtov(&out.loss)?,
            grad: [
                self.stream.memcpy_dtov(&out.grad[0])?,
                self.stream.memcpy_dtov(&out.grad[1])?,
            ],
        })
    }

    fn seq_sum(
        &self,
        a: &[f32],
        c: Option<&[f32]>,
        mask: &[f32],
        t_len: usize,
    ) -> std::result::Result<Vec<f32>, CudaError> {
        let (da, dm) = (upload(self, a)?, upload(self, mask)?);
        let dc = c.map(|c| upload(self, c)).transpose()?;
        let mut out = upload(self, &nans(a.len() / t_len.max(1)))?;
        self.masked_seq_sum(&da, dc.as_ref(), &dm, t_len, &mut out)?;
        Ok(self.stream.memcpy_dtov(&out)?)
    }

    fn gae(
        &self,
        r: &[f32],
        v: &[f32],
        m: &[f32],
        gamma: f64,
        lambda: f64,
        t_len: usize,
    ) -> std::result::Result<(Vec<f32>, Vec<f32>), CudaError> {
        let (dr, dv, dm) = (upload(self, r)?, upload(self, v)?, upload(self, m)?);
        let mut adv = upload(self, &nans(r.len()))?;
        let mut ret = upload(self, &nans(r.len()))?;
        Gpu::gae(
            self, &dr, &dv, &dm, gamma, lambda, t_len, &mut adv, &mut ret,
        )?;
        Ok((
            self.stream.memcpy_dtov(&adv)?,
            self.stream.memcpy_dtov(&ret)?,
        ))
    }
}

/// A raw float32 folded into `[-max, max]` for `max` a power of 2 (a NaN or
/// infinity becomes 0), with its sign and mantissa kept.
fn folded(bits: u32, max: f32) -> f32 {
    let x = f32::from_bits(bits);
    if !x.is_finite() {
        0.0
    } else if x.abs() <= max {
        x
    } else {
        // Keep the mantissa, move the exponent below `max`'s (a power of 2).
        let top = max.to_bits() >> 23 & 0xff;
        let exponent = (bits >> 23 & 0xff) % top;
        f32::from_bits(bits & 0x807f_ffff | exponent << 23)
    }
}

/// One to eight values: raw float32 folded into `[-max, max]`, multiples of
/// 1/4 in `[-16, 16]`, 0, or the negation of the value before.
fn palette(u: &mut Unstructured<'_>, max: f32) -> Result<Vec<f32>> {
    let k = u.int_in_range(1..=8usize)?;
    let mut values: Vec<f32> = Vec::with_capacity(k);
    for _ in 0..k {
        let x = match u.int_in_range(0..=3u8)? {
            0 => folded(u.arbitrary()?, max),
            1 => f32::from(u.int_in_range(-64i8..=64)?) * 0.25,
            2 => 0.0,
            _ => -values.last().copied().unwrap_or(1.0),
        };
        values.push(x);
    }
    Ok(values)
}

/// `count` values picked from `palette` by the bytes of `pattern` at
/// `offset`, `offset + stride`, ... taken cyclically (the first entry when
/// there are none).
fn picks<T: Copy>(
    pattern: &[u8],
    offset: usize,
    stride: usize,
    palette: &[T],
    count: usize,
) -> Vec<T> {
    (0..count)
        .map(|i| match pattern {
            [] => palette[0],
            p => palette[usize::from(p[(i * stride + offset) % p.len()]) % palette.len()],
        })
        .collect()
}

/// A coefficient in `[0, max]`: 0, `max`, a multiple of 1/64, or a raw
/// float64 folded into range.
fn coefficient(u: &mut Unstructured<'_>, max: f64) -> Result<f64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => 0.0,
        1 => max,
        2 => (f64::from(u.int_in_range(0..=255u8)?) / 64.0).min(max),
        _ => {
            let x = f64::from_bits(u.arbitrary()?).abs();
            if x.is_finite() { x % max } else { max / 2.0 }
        }
    })
}

fn pairs(u: &mut Unstructured<'_>, alg: Algorithm) -> Result<SequenceCase> {
    let n = u.int_in_range(1..=64usize)?;
    let beta = coefficient(u, MAX_COEF)?;
    let epsilon = if u.ratio(1, 4)? {
        f64::INFINITY
    } else {
        coefficient(u, MAX_COEF)?
    };
    let logprobs = palette(u, MAX_LOGPROB)?;
    // Steps lp - lp_old: the palette's, or exactly +-epsilon (the edge of
    // P3O-V2's band when the other response's step is 0).
    let mut steps = palette(u, MAX_STEP)?;
    if epsilon <= f64::from(MAX_STEP) {
        steps.extend([epsilon as f32, -epsilon as f32]);
    }
    // Rewards from float32 values, a quarter of them moved by 2^-30 so that
    // a reward difference is not always exact.
    let rewards: Vec<f64> = palette(u, MAX_REWARD as f32)?
        .into_iter()
        .map(|r| {
            f64::from(r)
                + if u.ratio(1, 4).unwrap_or(false) {
                    0.5f64.powi(30)
                } else {
                    0.0
                }
        })
        .map(|r| r.clamp(-MAX_REWARD, MAX_REWARD))
        .collect();
    let p = u.bytes(u.len())?;
    // Eight fields a pair, each picked by its own byte.
    let field = |f: usize, palette: &[f32]| picks(p, f, 8, palette, n);
    let lp_old = [field(0, &logprobs), field(1, &logprobs)];
    let step = [field(2, &steps), field(3, &steps)];
    let lp = [0, 1].map(|k| {
        lp_old[k]
            .iter()
            .zip(&step[k])
            .map(|(&o, &s)| (o + s).clamp(-MAX_LOGPROB, MAX_LOGPROB))
            .collect()
    });
    let x = PairInputs {
        lp,
        lp_ref: [field(4, &logprobs), field(5, &logprobs)],
        reward: [picks(p, 6, 8, &rewards, n), picks(p, 7, 8, &rewards, n)],
        lp_old,
    };
    Ok(SequenceCase::Pairs {
        alg,
        beta,
        epsilon,
        x,
    })
}

/// Rows and their length: 1 to 4 rows of up to `max` tokens, lengths up to
/// 300 (the sum's blocks have 128 threads) as likely as any length.
fn shape(u: &mut Unstructured<'_>, max: usize) -> Result<(usize, usize)> {
    let rows = u.int_in_range(1..=4usize)?;
    let t_len = if u.arbitrary()? {
        u.int_in_range(1..=300usize)?
    } else {
        u.int_in_range(1..=max)?
    };
    Ok((rows, t_len))
}

fn seq_sum(u: &mut Unstructured<'_>) -> Result<SequenceCase> {
    let (rows, t_len) = shape(u, MAX_SUM_LEN)?;
    let with_c: bool = u.arbitrary()?;
    let values = palette(u, MAX_SUMMAND)?;
    let p = u.bytes(u.len())?;
    let len = rows * t_len;
    // Masks: mostly 1, so that the summands' cancellation shows.
    let mask = picks(p, 2, 3, &[1.0f32, 1.0, 1.0, 0.0], len);
    Ok(SequenceCase::SeqSum {
        t_len,
        a: picks(p, 0, 3, &values, len),
        c: with_c.then(|| picks(p, 1, 3, &values, len)),
        mask,
    })
}

fn gae(u: &mut Unstructured<'_>) -> Result<SequenceCase> {
    let (rows, t_len) = shape(u, MAX_SCAN_LEN)?;
    let gamma = coefficient(u, 1.0)?;
    let lambda = coefficient(u, 1.0)?;
    let lengths: Vec<usize> = (0..rows)
        .map(|_| u.int_in_range(0..=t_len))
        .collect::<Result<_>>()?;
    let values = palette(u, MAX_GAE)?;
    let p = u.bytes(u.len())?;
    let len = rows * t_len;
    let mask = (0..len)
        .map(|k| f32::from(u8::from(k % t_len < lengths[k / t_len])))
        .collect();
    Ok(SequenceCase::Gae {
        t_len,
        rewards: picks(p, 0, 2, &values, len),
        values: picks(p, 1, 2, &values, len),
        mask,
        gamma,
        lambda,
    })
}
