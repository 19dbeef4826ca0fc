//! Per-layer key and value cache: for incremental decoding, preallocated to
//! the longest sequence of the call so that a step writes only its new
//! entries (no copy of the whole cache per step); for training over a
//! shared prefix ([C-SHARED-PREFIX]), grown by concatenation, so that
//! autograd sees no in-place write, and repeatable row by row.

use tch::{TchError, Tensor};

/// Keys and values `[b, h, capacity, d]` of every layer; the first `len`
/// positions are filled.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    capacity: i64,
    len: i64,
    /// Append by concatenation (a new tensor each time) instead of writing
    /// into preallocated storage.
    concatenate: bool,
}

impl KvCache {
    /// A cache for sequences of at most `capacity` positions.
    pub fn new(layers: usize, capacity: i64) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| None).collect(),
            capacity,
            len: 0,
            concatenate: false,
        }
    }

    /// A cache that appends by concatenation: every append makes new
    /// tensors and never writes into old ones, so gradients flow through
    /// the cached keys and values into whatever computed them.
    pub fn differentiable(layers: usize) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| None).collect(),
            capacity: 0,
            len: 0,
            concatenate: true,
        }
    }

    /// Replaces the cached rows by rows `index` of them (`index: [b']`, int64,
    /// entries may repeat): one prompt's keys and values serve each of its
    /// responses ([C-SHARED-PREFIX]). Differentiable: gradients of repeated
    /// rows add up in the row they came from.
    pub fn select_rows(&mut self, index: &Tensor) -> Result<(), TchError> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.f_index_select(0, index)?;
            *v = v.f_index_select(0, index)?;
        }
        Ok(())
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
        if self.concatenate {
            return self.append_by_concatenation(layer, k, v, t);
        }
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

    /// [`KvCache::append`] of a differentiable cache.
    fn append_by_concatenation(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
        t: i64,
    ) -> Result<(Tensor, Tensor), TchError> {
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            TchError::Shape(format!("layer {layer} of a cache of {layers} layers"))
        })?;
        let joined = match slot.take() {
            None => (k, v),
            Some((ck, cv)) => (Tensor::f_cat(&[&ck, &k], 2)?, Tensor::f_cat(&[&cv, &v], 2)?),
        };
        let out = (joined.0.shallow_clone(), joined.1.shallow_clone());
        *slot = Some(joined);
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
