//! The one clipping routine every clipped loss uses ([C-CLIP]).

/// The clipped objective `min(A q, A clip(q, lo, hi))` of [C-CLIP]: its value
/// and whether the gradient `A dq` passes (false exactly where clipping
/// zeroes it).
pub fn clipped_objective(a: f64, q: f64, lo: f64, hi: f64) -> (f64, bool) {
    let clipped = q.max(lo).min(hi);
    let value = (a * q).min(a * clipped);
    let zeroed = (a > 0.0 && q > hi) || (a < 0.0 && q < lo);
    (value, !zeroed)
}

/// `[1 - eps, 1 + eps]`, unbounded when `eps` is infinite.
pub fn ratio_band(eps: f64) -> (f64, f64) {
    (1.0 - eps, 1.0 + eps)
}
