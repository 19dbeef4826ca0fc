//! Every numerical tolerance of the test suites, named by what it compares.

/// Two float64 computations of the same quantity by different formulas
/// (relative, with an absolute floor of the same size).
pub const F64_IDENTITY: f64 = 1e-10;

/// A float64 quantity computed from `r` and from `r + delta` with
/// `|delta| <= 1e3`: the shift is rounded into the rewards, so the error scales
/// with `eps * |r + delta|` (relative to that scale).
pub const F64_SHIFTED: f64 = 1e-9;

/// A float64 result against an independent formula for the same stored
/// inputs: a few units in the last place, relative to the larger of one and
/// the value.
pub const F64_ULPS: f64 = 8.0 * f64::EPSILON;

/// Central finite differences of a float64 surrogate against its analytic
/// gradient (step `FD_STEP`), relative with an absolute floor.
pub const FINITE_DIFFERENCE: f64 = 1e-6;

/// Step of the central finite differences.
pub const FD_STEP: f64 = 1e-5;

/// Monte-Carlo checks: the estimate must lie within this many standard
/// errors of the exact value.
pub const MC_STANDARD_ERRORS: f64 = 5.0;

/// Whether `a` and `b` agree to relative tolerance `tol` (absolute near 0).
pub fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// A float32 kernel against the float64 reference on the same inputs:
/// elementwise `|a - b| <= F32_VS_F64 * max(1, |b|)` for per-row scalars
/// (log-probs, logsumexp, sums, pair losses); gradient rows are held to a
/// [`GradTolerance`].
pub const F32_VS_F64: f64 = 1e-5;

/// As `F32_VS_F64` for outputs stored in bfloat16 (8 significant bits,
/// rounding to nearest: at most 2^-9 relative, doubled for the float32
/// arithmetic before it).
pub const BF16_VS_F64: f64 = 1.0 / 256.0;

/// The fused LM head ([C-FUSED-HEAD]) on bfloat16 inputs against the
/// float64 reference on the same inputs: the head product rounds each
/// logit to bfloat16 (`2^-9 |z|`), which moves `logp` and the entropy by
/// at most twice that of the largest `|z|` (the entropy also by its own
/// size) and each softmax value by about twice it, relative; the bound is
/// `2^-7 max |z|` for the values and `2^-7 + 4 2^-7 max |z|` of the
/// magnitudes forming each gradient entry (the gradient's own bfloat16
/// rounding included).
pub const BF16_HEAD: f64 = 1.0 / 128.0;

/// The gradient rows' floor relative to the upstream gradient `g`:
/// `2^-120`. Softmax values under float32's normal range are not
/// representable, and the kernels may flush them to zero
/// ([C-TOKEN-LOGPROB]), so errors below `2^-120 |g|` are not counted.
pub const GRAD_FLOOR: f64 = 1.0 / (1u128 << 120) as f64;

/// A kernel's gradient row against the reference, for the type it is
/// stored in: `max_v |a - b| <= relative * max_v |b| + GRAD_FLOOR |g| +
/// subnormal`, where `subnormal` is half the spacing of the type's
/// subnormal numbers (an entry under the normal range is rounded to it,
/// whatever the arithmetic before).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradTolerance {
    pub relative: f64,
    pub subnormal: f64,
}

/// [`GradTolerance`] of a float32 gradient: subnormal spacing `2^-149`.
pub const F32_GRAD: GradTolerance = GradTolerance {
    relative: F32_VS_F64,
    subnormal: F32_SUBNORMAL_HALF,
};

/// [`GradTolerance`] of a bfloat16 gradient: subnormal spacing `2^-133`.
pub const BF16_GRAD: GradTolerance = GradTolerance {
    relative: BF16_VS_F64,
    subnormal: 1.0 / (1u128 << 127) as f64 / (1u128 << 7) as f64,
};

/// A float32 output of a kernel that computes in float64 and rounds once to
/// float32 at the end (the pair, sequence-sum and GAE kernels,
/// [C-F64-KERNELS]), against the float64 reference on the same inputs:
/// `|a - b| <= F32_ROUNDING |b| + F64_SUMMANDS scale + F32_SUBNORMAL_HALF`,
/// where `scale` is the magnitude of what the computation adds and
/// multiplies (see `p3o::cuda::compare`): the two float64 computations may
/// order their operations differently, contract them into fused
/// multiply-adds, or call exp and log1p with a last-bit difference, and
/// where terms cancel, those roundings count against the terms, not the
/// result.
pub const F32_ROUNDING: f64 = 1.0 / (1u64 << 24) as f64;

/// See [`F32_ROUNDING`]: about 90000 roundings of `2^-53` relative to the
/// summands, enough for a masked sum of 4096 terms or a GAE scan of 2048
/// steps at a few roundings each (the error bound of a recursive sum grows
/// with its length), and a float32 computation of the same quantities
/// (`2^-24` per operation) still fails it where terms cancel.
pub const F64_SUMMANDS: f64 = 1e-11;

/// Half the spacing of float32's subnormal numbers, `2^-150`: the
/// rounding of a result under float32's normal range.
pub const F32_SUBNORMAL_HALF: f64 = 1.0 / (1u128 << 127) as f64 / (1u128 << 23) as f64;

/// The optimizer's fused float32 host pass against the same AdamW as libtorch
/// tensor operations (the same float32 operations in the same order; the
/// vectorised division and square root of either side may round the last
/// bit differently), relative to `max(1e-3, |x|)`.
pub const HOST_VS_TENSOR_F32: f64 = 1e-5;

/// One training step's metrics (loss, gradient norm, KL, ratios) with
/// `kernels = cuda` against `kernels = torch` from the same weights and
/// samples: float32 roundings of the token log-probs, sequence sums, pair
/// losses and advantages carried through a forward and a backward. Relative
/// to `max(1, |x|)`: at the first step the policy is the reference, so the
/// KL (and with it a loss) cancels to rounding level.
pub const KERNELS_VS_TORCH_STEP: f64 = 1e-5;

/// The tch models against HF transformers on the committed fixtures, float32:
/// max absolute error of logits and rewards.
pub const HF_F32: f64 = 1e-4;

/// Cached against uncached generation (the same float32 model): log-probs of
/// the sampled tokens.
pub const CACHE_VS_RECOMPUTE: f64 = 1e-5;

/// As `HF_F32` with the model computing in bfloat16 (weights and activations
/// rounded to 8 significant bits), against HF's float32 logits; the fixtures'
/// logits are of order 10.
pub const HF_BF16: f64 = 0.25;
