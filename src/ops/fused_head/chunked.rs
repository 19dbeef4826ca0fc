//! The fast paths' skeleton of [C-FUSED-HEAD]: the rows in chunks of `C`,
//! each chunk's logits `z = (h W^T + b) / tau` made by one head product
//! (float32, or the model's type widened to float32), its softmax by a
//! [`ChunkMath`], and in the backward the chunk's logits made again and
//! `G = d loss / d z` turned into the three gradients by two more head
//! products and a column sum. Nothing `[N, V]` is ever allocated.

use tch::{Kind, Tensor};

use super::error::HeadError;

/// The op's inputs: `hidden [N, H]`, the head's `weight [V, H]` and `bias
/// [V]` in one floating type, `targets [N]` (int64), the temperature and
/// the rows per chunk.
pub struct HeadTensors<'a> {
    pub hidden: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub targets: &'a Tensor,
    pub temperature: f64,
    pub chunk: i64,
}

/// A chunk's softmax: from float32 logits `z [C, V]` and `targets [C]`.
pub trait ChunkMath {
    /// `(logp [C], entropy [C], stats [C, 2])`, float32; `stats` holds per
    /// row the maximum `m` and `s = log sum exp(z - m)`.
    fn forward(&self, z: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor, Tensor), HeadError>;

    /// `G = d loss / d z [C, V]`, float32, from the forward's `stats` and
    /// `entropy`, `a = d loss / d logp [C]` and `c = d loss / d entropy`.
    fn backward(
        &self,
        z: &Tensor,
        targets: &Tensor,
        stats: &Tensor,
        entropy: &Tensor,
        a: &Tensor,
        c: Option<&Tensor>,
    ) -> Result<Tensor, HeadError>;
}

/// The forward's outputs, all `[N]` float32 but `stats [N, 2]`: the
/// backward needs `stats` and `entropy` (O(N), [C-FUSED-HEAD]).
pub struct Forward {
    pub logp: Tensor,
    pub entropy: Tensor,
    pub stats: Tensor,
}

/// The gradients: `hidden [N, H]` in the hidden states' type; `weight [V,
/// H]` and `bias [V]` float32 (accumulated over chunks), where asked for.
pub struct Grads {
    pub hidden: Tensor,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl HeadTensors<'_> {
    fn check(&self) -> Result<(i64, i64), HeadError> {
        let hs = self.hidden.size();
        let ws = self.weight.size();
        let bad = |m: String| Err(HeadError::Shape(m));
        if hs.len() != 2 || ws.len() != 2 || hs[1] != ws[1] || ws[0] < 1 {
            return bad(format!(
                "hidden {hs:?} and weight {ws:?} are not [N, H] and [V, H]"
            ));
        }
        if self.targets.size() != [hs[0]] || self.targets.kind() != Kind::Int64 {
            return bad(format!(
                "targets must be int64 [{}], got {:?} {:?}",
                hs[0],
                self.targets.kind(),
                self.targets.size()
            ));
        }
        if let Some(b) = self.bias
            && b.size() != [ws[0]]
        {
            return bad(format!("bias must be [{}], got {:?}", ws[0], b.size()));
        }
        if self.chunk < 1 {
            return bad(format!(
                "rows per chunk must be at least 1, got {}",
                self.chunk
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "temperature must be positive, got {}",
                self.temperature
            ));
        }
        Ok((hs[0], ws[0]))
    }

    /// `(start, rows)` of each chunk.
    fn chunks(&self, n: i64) -> impl Iterator<Item = (i64, i64)> + use<> {
        let c = self.chunk;
        (0..n).step_by(c as usize).map(move |s| (s, c.min(n - s)))
    }

    /// Rows `start .. start + rows` of `hidden` and their float32 logits.
    fn chunk_logits(&self, start: i64, rows: i64) -> Result<(Tensor, Tensor), HeadError> {
        let h = self.hidden.f_narrow(0, start, rows)?;
        let mut z = h.f_linear(self.weight, self.bias)?.f_to_kind(Kind::Float)?;
        if self.temperature != 1.0 {
            z = z.f_div_scalar(self.temperature)?;
        }
        Ok((h, z))
    }
}

/// The forward of [C-FUSED-HEAD], outside autograd.
pub fn forward(x: &HeadTensors, math: &dyn ChunkMath) -> Result<Forward, HeadError> {
    let (n, _) = x.check()?;
    tch::no_grad(|| {
        let (mut logp, mut entropy, mut stats) = (vec![], vec![], vec![]);
        for (start, rows) in x.chunks(n) {
            let (_, z) = x.chunk_logits(start, rows)?;
            let (l, e, s) = math.forward(&z, &x.targets.f_narrow(0, start, rows)?)?;
            logp.push(l);
            entropy.push(e);
            stats.push(s);
        }
        let cat = |t: Vec<Tensor>, shape: &[i64]| -> Result<Tensor, HeadError> {
            Ok(if t.is_empty() {
                Tensor::f_zeros(shape, (Kind::Float, x.hidden.device()))?
            } else {
                Tensor::f_cat(&t, 0)?
            })
        };
        Ok(Forward {
            logp: cat(logp, &[0])?,
            entropy: cat(entropy, &[0])?,
            stats: cat(stats, &[0, 2])?,
        })
    })
}

/// The backward of [C-FUSED-HEAD], outside autograd, for `grad_logp [N]`
/// and optionally `grad_entropy [N]`; the weight's and bias's gradients
/// only where `weight_grads`.
pub fn backward(
    x: &HeadTensors,
    math: &dyn ChunkMath,
    fwd: &Forward,
    grad_logp: &Tensor,
    grad_entropy: Option<&Tensor>,
    weight_grads: bool,
) -> Result<Grads, HeadError> {
    let (n, v) = x.check()?;
    tch::no_grad(|| {
        let device = x.hidden.device();
        let kind = x.hidden.kind();
        let h_dim = x.hidden.size()[1];
        let mut dw = if weight_grads {
            Some(Tensor::f_zeros([v, h_dim], (Kind::Float, device))?)
        } else {
            None
        };
        let mut db = match (weight_grads, x.bias) {
            (true, Some(_)) => Some(Tensor::f_zeros([v], (Kind::Float, device))?),
            _ => None,
        };
        let a = grad_logp.f_to_kind(Kind::Float)?;
        let c = grad_entropy.map(|c| c.f_to_kind(Kind::Float)).transpose()?;
        let mut dh = Vec::new();
        for (start, rows) in x.chunks(n) {
            let (h, z) = x.chunk_logits(start, rows)?;
            let part = |t: &Tensor| t.f_narrow(0, start, rows);
            let c_part = c.as_ref().map(part).transpose()?;
            let mut g = math.backward(
                &z,
                &part(x.targets)?,
                &part(&fwd.stats)?,
                &part(&fwd.entropy)?,
                &part(&a)?,
                c_part.as_ref(),
            )?;
            drop(z);
            if x.temperature != 1.0 {
                g = g.f_div_scalar(x.temperature)?;
            }
            if let Some(db) = db.as_mut() {
                let _ =
                    db.f_add_(&g.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?)?;
            }
            let g = g.f_to_kind(kind)?;
            dh.push(g.f_mm(x.weight)?);
            if let Some(dw) = dw.as_mut() {
                let _ = dw.f_add_(&g.f_tr()?.f_mm(&h)?.f_to_kind(Kind::Float)?)?;
            }
        }
        let hidden = if dh.is_empty() {
            x.hidden.f_zeros_like()?
        } else {
            Tensor::f_cat(&dh, 0)?
        };
        Ok(Grads {
            hidden,
            weight: dw,
            bias: db,
        })
    })
}
