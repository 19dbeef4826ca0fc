//! Per-layer key and value cache of incremental decoding, preallocated to
//! the longest sequence of the call so that a step writes only its new
//! entries (no copy of the whole cache per step).

use tch::{TchError, Tensor};

/// Keys and values `[b, h, capacity, d]` of every layer; the first `len`
/// positions are filled.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    capacity: i64,
    len: i64,
}

impl KvCache {
    /// A cache for sequences of at most `capacity` positions.
    pub fn new(layers: usize, capacity: i64) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| None).collect(),
            capacity,
            len: 0,
        }
    }

    /// Writes this step's keys and values `[b, h, t, d]` of `layer` after the
    /// cached ones and returns views of all of them. Every layer appends the
    /// same `t` within a step; the length moves on with the last layer.
    /// A layer beyond the cache's count, or entries whose shape differs
    /// from the cached ones, are errors.
    pub fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor), TchError> {
        let layers = self.layers.len();
        let t = k.size().get(2).copied().unwrap_or(0);
        let start = self.len;
        if start + t > self.capacity {
            self.grow((start + t).max(2 * self.capacity))?;
        }
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            TchError::Shape(format!("layer {layer} of a cache of {layers} layers"))
        })?;
        if slot.is_none() {
            let mut shape = k.size();
            shape[2] = self.capacity;
            let zeros = |x: &Tensor| Tensor::f_zeros(shape.as_slice(), (x.kind(), x.device()));
            *slot = Some((zeros(&k)?, zeros(&v)?));
        }
        let (ck, cv) = slot.as_ref().expect("filled just above");
        ck.f_narrow(2, start, t)?.f_copy_(&k)?;
        cv.f_narrow(2, start, t)?.f_copy_(&v)?;
        let out = (ck.f_narrow(2, 0, start + t)?, cv.f_narrow(2, 0, start + t)?);
        if layer + 1 == layers {
            self.len += t;
        }
        Ok(out)
    }

    /// Moves every layer's storage to a larger capacity, keeping its entries.
    fn grow(&mut self, capacity: i64) -> Result<(), TchError> {
        for (k, v) in self.layers.iter_mut().flatten() {
            let widen = |x: &Tensor| -> Result<Tensor, TchError> {
                let mut shape = x.size();
                shape[2] = capacity;
                let bigger = Tensor::f_zeros(shape.as_slice(), (x.kind(), x.device()))?;
                bigger.f_narrow(2, 0, x.size()[2])?.f_copy_(x)?;
                Ok(bigger)
            };
            (*k, *v) = (widen(k)?, widen(v)?);
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Cached positions so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
