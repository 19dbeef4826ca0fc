//! Causal self-attention over padded batches: the boolean mask (with an
//! optional sliding window), grouped-query attention, and the KV cache's
//! part in a forward pass.

use tch::{Kind, TchError, Tensor};

use super::kv_cache::KvCache;
use super::rotary::RotaryTables;

/// What every layer of one forward pass shares: the mask, the rotary
/// tables, and the first key position the queries can see at all.
pub struct Frame {
    /// `[b, 1, t, T - key_start]`, true where a query may attend.
    pub mask: Tensor,
    pub rotary: Option<RotaryTables>,
    /// Keys before this position lie outside every query's sliding window
    /// (a decoding step with a window shorter than the sequence); the
    /// attention reads only the keys from here on.
    pub key_start: i64,
}

impl Frame {
    /// The frame of `queries` new positions at the end of the keys that
    /// `key_valid: [b, T]` marks as real, with an optional window of
    /// `window` keys (Mistral's `sliding_window`: a query at `i` sees keys
    /// `j` with `i - window < j <= i`).
    pub fn new(
        key_valid: &Tensor,
        queries: i64,
        window: Option<i64>,
        rotary: Option<RotaryTables>,
    ) -> Result<Frame, TchError> {
        let keys = key_valid.size().get(1).copied().unwrap_or(0);
        let device = key_valid.device();
        let valid = key_valid.f_to_kind(Kind::Bool)?;
        if queries == 1 {
            // One new query (a decoding step): every earlier key is in its
            // past, so only padding, the window and its own key matter.
            let key_start = window.map_or(0, |w| (keys - w).max(0));
            let valid = valid
                .f_narrow(1, key_start, keys - key_start)?
                .f_detach_copy()?; // never alias the input
            let _ = valid.f_narrow(1, keys - key_start - 1, 1)?.f_fill_(1)?;
            return Ok(Frame {
                mask: valid.f_view([-1, 1, 1, keys - key_start])?,
                rotary,
                key_start,
            });
        }
        let q_pos = Tensor::f_arange_start(keys - queries, keys, (Kind::Int64, device))?
            .f_view([queries, 1])?;
        let k_pos = Tensor::f_arange(keys, (Kind::Int64, device))?.f_view([1, keys])?;
        let mut visible = k_pos.f_le_tensor(&q_pos)?; // [t, T]
        if let Some(w) = window {
            visible = visible.f_logical_and(&k_pos.f_gt_tensor(&q_pos.f_sub_scalar(w)?)?)?;
        }
        // Each query also sees itself, so that padding queries (whose
        // outputs are never used) stay finite and cannot leak NaN into
        // real rows.
        let diagonal = k_pos.f_eq_tensor(&q_pos)?.f_unsqueeze(0)?.f_unsqueeze(0)?;
        let mask = visible
            .f_unsqueeze(0)?
            .f_unsqueeze(0)?
            .f_logical_and(&valid.f_view([-1, 1, 1, keys])?)?
            .f_logical_or(&diagonal)?;
        Ok(Frame {
            mask,
            rotary,
            key_start: 0,
        })
    }
}

/// Adds this step's keys and values `[b, h_kv, t, d]` to the cache of
/// `layer` (when there is one) and returns all of them so far.
pub fn cached(
    cache: Option<(&mut KvCache, usize)>,
    k: Tensor,
    v: Tensor,
) -> Result<(Tensor, Tensor), TchError> {
    match cache {
        Some((c, layer)) => c.append(layer, k, v),
        None => Ok((k, v)),
    }
}

/// Scaled dot-product attention of queries `[b, h, t, d]` over keys and
/// values `[b, h_kv, T, d]`, `h` a multiple of `h_kv` (grouped-query
/// attention: each key head serves `h / h_kv` query heads), under the
/// frame's mask; the scale is `1 / sqrt(d)`. Returns `[b, t, h * d]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, frame: &Frame) -> Result<Tensor, TchError> {
    let (b, heads, t, d) = q.size4()?;
    let (k, v) = if frame.key_start > 0 {
        let keys = k.size()[2] - frame.key_start;
        (
            k.f_narrow(2, frame.key_start, keys)?,
            v.f_narrow(2, frame.key_start, keys)?,
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let grouped = k.size()[1] != heads;
    let out = Tensor::f_scaled_dot_product_attention(
        q,
        &k,
        &v,
        Some(&frame.mask),
        0.0,
        false,
        None,
        grouped,
    )?;
    out.f_transpose(1, 2)?
        .f_contiguous()?
        .f_view([b, t, heads * d])
}
