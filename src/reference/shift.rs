//! Per-context reward shifts `delta(x)` ([C-REWARD-EQUIV], [C-REWARD-SHIFT])
//! and positive scales `c(x)` ([C-REWARD-SCALE]).

use std::str::FromStr;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A reward shift specification: `const:C` or `random:A[:SEED]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RewardShift {
    Const(f64),
    Random { amplitude: f64, seed: u64 },
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid reward shift `{spec}`: {reason} (expected `const:C` or `random:A[:SEED]`)")]
pub struct ShiftParseError {
    spec: String,
    reason: String,
}

impl FromStr for RewardShift {
    type Err = ShiftParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ShiftParseError {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let number = |s: &str, what: &str| -> Result<f64, ShiftParseError> {
            let v: f64 = s
                .parse()
                .map_err(|_| fail(&format!("{what} `{s}` is not a number")))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(fail(&format!("{what} must be finite")))
            }
        };
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.as_slice() {
            ["const", c] => Ok(RewardShift::Const(number(c, "C")?)),
            ["random", a, rest @ ..] if rest.len() <= 1 => {
                let amplitude = number(a, "A")?;
                if amplitude < 0.0 {
                    return Err(fail("A must be non-negative"));
                }
                let seed = match rest {
                    [] => 0,
                    [s] => s
                        .parse()
                        .map_err(|_| fail(&format!("SEED `{s}` is not an unsigned integer")))?,
                    _ => unreachable!(),
                };
                Ok(RewardShift::Random { amplitude, seed })
            }
            _ => Err(fail("unknown form")),
        }
    }
}

/// One draw of `delta` ([C-REWARD-SHIFT]): `j s` with `s = 2^(ceil(log2 A) - 23)`
/// and `j` uniform in `-floor(A / s)..=floor(A / s)`, a multiple of a power
/// of two with at most 24 significant bits, so that `r + delta` is exact in
/// float64 for float32 rewards of similar magnitude and the shift cancels
/// exactly in a reward difference.
fn uniform_draw(rng: &mut ChaCha8Rng, amplitude: f64) -> f64 {
    if amplitude == 0.0 {
        return 0.0;
    }
    let step = (amplitude.log2().ceil() - 23.0).exp2();
    let j = (amplitude / step).floor() as i64;
    rng.random_range(-j..=j) as f64 * step
}

impl RewardShift {
    /// `delta(x)` for `x in 0..contexts`.
    pub fn deltas(&self, contexts: usize) -> Vec<f64> {
        match *self {
            RewardShift::Const(c) => vec![c; contexts],
            RewardShift::Random { amplitude, seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                (0..contexts)
                    .map(|_| uniform_draw(&mut rng, amplitude))
                    .collect()
            }
        }
    }

    /// `delta` of a prompt given by its text: `C`, or for `random:A[:SEED]`
    /// the first uniform draw in `[-A, A]` of a ChaCha8 stream seeded with
    /// the 64-bit FNV-1a hash of the text mixed with `SEED` (so the same
    /// prompt always gets the same shift).
    pub fn delta_for_text(&self, text: &str) -> f64 {
        match *self {
            RewardShift::Const(c) => c,
            RewardShift::Random { amplitude, seed } => {
                uniform_draw(&mut text_stream(text, seed), amplitude)
            }
        }
    }

    /// `r + delta`: every reward of context `x` shifted by `delta(x)`.
    pub fn apply(&self, rewards: &Array2<f64>) -> Array2<f64> {
        shift_rewards(rewards, &self.deltas(rewards.nrows()))
    }
}

/// The ChaCha8 stream of a prompt text: seeded with the text's 64-bit
/// FNV-1a hash XOR `seed` rotated left by 32 bits.
fn text_stream(text: &str, seed: u64) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(h ^ seed.rotate_left(32))
}

/// A per-prompt positive reward scale, `random:LO:HI[:SEED]`
/// ([C-REWARD-SCALE]): `c(x) = 2^k` with `k` uniform over the integers of
/// `[log2 LO, log2 HI]`, so that `c(x) r` is exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RewardScale {
    /// The exponents `k` lie in `lo..=hi`.
    lo: i32,
    hi: i32,
    seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid reward scale `{spec}`: {reason} (expected `random:LO:HI[:SEED]`)")]
pub struct ScaleParseError {
    spec: String,
    reason: String,
}

/// The factors a scale may draw: `2^-64 ..= 2^64`.
const MAX_SCALE_EXPONENT: i32 = 64;

impl FromStr for RewardScale {
    type Err = ScaleParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ScaleParseError {
            spec: spec.to_string(),
            reason,
        };
        let bound = |s: &str, what: &str| -> Result<f64, ScaleParseError> {
            let v: f64 = s
                .parse()
                .map_err(|_| fail(format!("{what} `{s}` is not a number")))?;
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(fail(format!("{what} must be finite and positive")))
            }
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (lo, hi, seed) = match parts.as_slice() {
            ["random", lo, hi] => (bound(lo, "LO")?, bound(hi, "HI")?, 0),
            ["random", lo, hi, s] => (
                bound(lo, "LO")?,
                bound(hi, "HI")?,
                s.parse()
                    .map_err(|_| fail(format!("SEED `{s}` is not an unsigned integer")))?,
            ),
            _ => return Err(fail("unknown form".into())),
        };
        let limit = f64::from(MAX_SCALE_EXPONENT);
        let (k_lo, k_hi) = (lo.log2().ceil(), hi.log2().floor());
        if k_lo < -limit || k_hi > limit {
            return Err(fail(format!(
                "LO and HI must lie within 2^-{MAX_SCALE_EXPONENT} ..= 2^{MAX_SCALE_EXPONENT}"
            )));
        }
        if k_lo > k_hi {
            return Err(fail(format!("no power of two lies in [{lo}, {hi}]")));
        }
        Ok(RewardScale {
            lo: k_lo as i32,
            hi: k_hi as i32,
            seed,
        })
    }
}

impl RewardScale {
    /// `c` of a prompt given by its text: `2^k` with `k` the first uniform
    /// draw of the text's stream (as [`RewardShift::delta_for_text`]).
    pub fn factor_for_text(&self, text: &str) -> f64 {
        let k = text_stream(text, self.seed).random_range(self.lo..=self.hi);
        f64::from(k).exp2()
    }
}

/// Adds `delta[x]` to row `x` of a reward table.
pub fn shift_rewards(rewards: &Array2<f64>, delta: &[f64]) -> Array2<f64> {
    let mut out = rewards.clone();
    for (mut row, &d) in out.rows_mut().into_iter().zip(delta) {
        row += d;
    }
    out
}
