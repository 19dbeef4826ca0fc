//! Token-kernel cases decoded from arbitrary bytes: the input of the fuzz
//! target `host_token_kernels` (a differential target: the host execution of
//! `kernels/token_logprob.cu` and the float64 reference must agree on every
//! row) and of the replay of its crash files in `tests/cuda_kernels.rs`.
//!
//! A case stays inside [C-TOKEN-LOGPROB]'s domain: finite logits of
//! magnitude at most `2^126` (so every difference of two logits, and
//! `logp`, is a float32) or `-inf`, each target's logit finite, and upstream
//! gradients 0 or of magnitude in `[2^-20, 2^21)` (entries `g p` for `p`
//! down to `2^-100` then stay normal floats).
//! The logits are drawn from a small palette, so that ties, masked entries
//! and terms near float32's subnormal range are common, and a target may be
//! lifted above the rest of its row; rows are up to 131072 long.

use std::ops::RangeInclusive;

use arbitrary::{Result, Unstructured};

use super::compare::{CaseFailure, TokenOutputs, check_token_rows};
use super::host::{Host, HostLogitElement};
use super::ops::Bf16;
use crate::tolerance::{BF16_GRAD, F32_GRAD, GradTolerance};

/// The largest logit magnitude of the domain.
const MAX_LOGIT: f32 = f32::from_bits((127 + 126) << 23); // 2^126

/// Row lengths: short (every head and tail split of the vector loads),
/// medium (past the forward's warp loop in both dtypes) and long (a
/// thread then holds dozens of chunks, as at the vocabularies of
/// [C-TOKEN-LOGPROB]'s users).
const LENGTHS: [RangeInclusive<usize>; 3] = [1..=64, 65..=9000, 9001..=131_072];

/// One decoded case: `[n, v]` float32 logits (rounded to bfloat16 first
/// when `bf16`), targets and upstream gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenCase {
    pub v: usize,
    pub logits: Vec<f32>,
    pub targets: Vec<i64>,
    pub g: Vec<f32>,
    pub bf16: bool,
}

impl TokenCase {
    /// Decodes `data`. Running out of bytes is not an error: the rest of
    /// the case takes default values (and a row repeats its pattern).
    pub fn from_bytes(data: &[u8]) -> Result<TokenCase> {
        let mut u = Unstructured::new(data);
        let bf16 = u.arbitrary()?;
        let lengths = u.choose(&LENGTHS)?.clone();
        let v = u.int_in_range(lengths)?;
        let n = u.int_in_range(1..=3usize)?;
        let palette = palette(&mut u)?;
        let mut targets = Vec::with_capacity(n);
        let mut g = Vec::with_capacity(n);
        let mut lifts = Vec::with_capacity(n);
        for _ in 0..n {
            targets.push(u.int_in_range(0..=v as i64 - 1)?);
            g.push(upstream_gradient(&mut u)?);
            lifts.push(target_lift(&mut u)?);
        }
        // The rest of the bytes pick palette entries, cyclically.
        let pattern = u.take_rest();
        let pick = |i: usize| match pattern {
            [] => palette[0],
            p => palette[usize::from(p[i % p.len()]) % palette.len()],
        };
        let mut logits: Vec<f32> = (0..n * v).map(pick).collect();
        for (r, (&t, lift)) in targets.iter().zip(lifts).enumerate() {
            let row = &mut logits[r * v..(r + 1) * v];
            let top = row
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .reduce(f32::max);
            let x = &mut row[t as usize];
            if let (Some(lift), Some(top)) = (lift, top) {
                *x = (top + lift).min(MAX_LOGIT);
            } else if !x.is_finite() {
                *x = top.unwrap_or(0.0);
            }
        }
        if bf16 {
            for x in &mut logits {
                *x = Bf16::from_f32(*x).to_f32();
            }
        }
        Ok(TokenCase {
            v,
            logits,
            targets,
            g,
            bf16,
        })
    }

    /// Runs the host execution of the token kernels on the case (outputs
    /// poisoned with NaN first) and checks every row against the reference.
    pub fn check_host(&self) -> std::result::Result<(), CaseFailure> {
        if self.bf16 {
            let x: Vec<Bf16> = self.logits.iter().map(|&x| Bf16::from_f32(x)).collect();
            self.check(&x, Bf16::from_f32(f32::NAN), BF16_GRAD)
        } else {
            self.check(&self.logits, f32::NAN, F32_GRAD)
        }
    }

    fn check<T: HostLogitElement>(
        &self,
        logits: &[T],
        nan: T,
        grad_tol: GradTolerance,
    ) -> std::result::Result<(), CaseFailure> {
        let n = self.targets.len();
        let (mut logp, mut lse) = (vec![f32::NAN; n], vec![f32::NAN; 2 * n]);
        let mut grad = vec![nan; logits.len()];
        Host.token_logprob_fwd(logits, &self.targets, self.v, &mut logp, &mut lse)?;
        Host.token_logprob_bwd(logits, &self.targets, &lse, &self.g, self.v, &mut grad)?;
        let out = TokenOutputs {
            logp: &logp,
            lse: &lse,
            grad: &grad,
        };
        check_token_rows(logits, &self.targets, &self.g, self.v, out, grad_tol).map_err(
            |(row, what)| CaseFailure::Output {
                at: format!("row {row}"),
                what,
            },
        )
    }
}

/// One to eight logit values: raw float32 bits (clamped into the domain),
/// quarter steps in `[-8, 8]`, `-inf`, or the first value less a multiple
/// of 1/2 up to 128 (terms from 1 down past float32's subnormal range).
fn palette(u: &mut Unstructured<'_>) -> Result<Vec<f32>> {
    let k = u.int_in_range(1..=8usize)?;
    let mut values: Vec<f32> = Vec::with_capacity(k);
    for _ in 0..k {
        let x = match u.int_in_range(0..=3u8)? {
            0 => {
                let x = f32::from_bits(u.arbitrary()?);
                if x.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    x.clamp(-MAX_LOGIT, MAX_LOGIT)
                }
            }
            1 => f32::from(u.int_in_range(-32i8..=32)?) * 0.25,
            2 => f32::NEG_INFINITY,
            _ => {
                let base = values.first().copied().filter(|b| b.is_finite());
                base.unwrap_or(0.0) - f32::from(u.int_in_range(0u8..=255)?) * 0.5
            }
        };
        values.push(x);
    }
    Ok(values)
}

/// Half the time, how far the target's logit is lifted above the row's
/// largest finite logit: 0 to 111 in steps of 7/8, so that the
/// target may hold all but a sliver of the mass, or all but terms under
/// float32's normal range.
fn target_lift(u: &mut Unstructured<'_>) -> Result<Option<f32>> {
    let b: u8 = u.arbitrary()?;
    Ok((b >= 128).then(|| f32::from(b - 128) * 0.875))
}

/// 0, or a float32 of magnitude in `[2^-20, 2^21)` from raw bits.
fn upstream_gradient(u: &mut Unstructured<'_>) -> Result<f32> {
    let bits: u32 = u.arbitrary()?;
    let x = f32::from_bits(bits);
    if bits & 0x7fff_ffff == 0 || !x.is_finite() {
        return Ok(0.0);
    }
    // Keep the sign and mantissa, fold the exponent into [-20, 20].
    let exponent = ((bits >> 23) & 0xff) % 41;
    Ok(f32::from_bits(
        (bits & 0x807f_ffff) | ((exponent + 127 - 20) << 23),
    ))
}
