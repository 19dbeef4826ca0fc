//! Per-layer key and value cache of incremental decoding, preallocated to
//! the longest sequence of the call so that a step writes only its new
//! entries (no copy of the whole cache per step).

use tch::Tensor;

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
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let start = self.len;
        if start + t > self.capacity {
            self.grow((start + t).max(2 * self.capacity));
        }
        let slot = self.layers[layer].get_or_insert_with(|| {
            let mut shape = k.size();
            shape[2] = self.capacity;
            let zeros = |x: &Tensor| Tensor::zeros(shape.as_slice(), (x.kind(), x.device()));
            (zeros(&k), zeros(&v))
        });
        slot.0.narrow(2, start, t).copy_(&k);
        slot.1.narrow(2, start, t).copy_(&v);
        let out = (
            slot.0.narrow(2, 0, start + t),
            slot.1.narrow(2, 0, start + t),
        );
        if layer + 1 == self.layers.len() {
            self.len += t;
        }
        out
    }

    /// Moves every layer's storage to a larger capacity, keeping its entries.
    fn grow(&mut self, capacity: i64) {
        for (k, v) in self.layers.iter_mut().flatten() {
            let widen = |x: &Tensor| {
                let mut shape = x.size();
                shape[2] = capacity;
                let bigger = Tensor::zeros(shape.as_slice(), (x.kind(), x.device()));
                bigger.narrow(2, 0, x.size()[2]).copy_(x);
                bigger
            };
            (*k, *v) = (widen(k), widen(v));
        }
        self.capacity = capacity;
    }

    /// Cached positions so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
