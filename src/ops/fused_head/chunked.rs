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

/// A chunk's softmax, from its float32 logits `z [C, V]` (in a workspace
/// the math may overwrite), a second float32 workspace `work [C, V]` and
/// `targets [C]`. The two workspaces are allocated once per call of
/// [`forward`] or [`backward`], so the chunks reuse the same memory instead
/// of asking the allocator for new `[C, V]` buffers each time (which the C
/// heap, kept unreturned by `p3o train`, would fragment).
pub trait ChunkMath {
    /// `(logp [C], entropy [C] where asked for, stats [C, 2])`, float32;
    /// `stats` holds per row the maximum `m` and `s = log sum exp(z - m)`.
    fn forward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        entropy: bool,
    ) -> Result<(Tensor, Option<Tensor>, Tensor), HeadError>;

    /// `G = d loss / d z [C, V]`, float32 (`work` itself, or a tensor of
    /// the math's own), from the forward's `stats` and `entropy`, `a = d
    /// loss / d logp [C]` and `c = d loss / d entropy` (which needs the
    /// forward's entropy).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        stats: &Tensor,
        entropy: Option<&Tensor>,
        a: &Tensor,
        c: Option<&Tensor>,
    ) -> Result<Tensor, HeadError>;
}

/// The forward's outputs, all `[N]` float32 but `stats [N, 2]`: the
/// backward needs `stats` (and `entropy` for the entropy's gradient; O(N),
/// [C-FUSED-HEAD]).
pub struct Forward {
    pub logp: Tensor,
    /// Present where the forward was asked for it.
    pub entropy: Option<Tensor>,
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

    /// The two float32 workspaces `[min(C, N), V]`.
    fn workspaces(&self, n: i64, v: i64) -> Result<[Tensor; 2], HeadError> {
        let shape = [self.chunk.min(n).max(1), v];
        let opts = (Kind::Float, self.hidden.device());
        Ok([Tensor::f_empty(shape, opts)?, Tensor::f_empty(shape, opts)?])
    }

    /// Rows `start .. start + rows` of `hidden`, and their logits written
    /// into the first `rows` rows of `z` (float32).
    fn chunk_logits(
        &self,
        start: i64,
        rows: i64,
        z: &Tensor,
    ) -> Result<(Tensor, Tensor), HeadError> {
        let h = self.hidden.f_narrow(0, start, rows)?;
        let mut z = z.f_narrow(0, 0, rows)?;
        if self.hidden.kind() == Kind::Float && self.weight.kind() == Kind::Float {
            let _ = h.f_mm_out(&z, &self.weight.f_tr()?)?;
            if let Some(b) = self.bias {
                let _ = z.f_add_(b)?;
            }
        } else {
            // A product in the model's type (bfloat16: float32 accumulation
            // inside, rounded once to bfloat16), widened into `z`.
            z.f_copy_(&h.f_linear(self.weight, self.bias)?)?;
        }
        if self.temperature != 1.0 {
            let _ = z.f_div_scalar_(self.temperature)?;
        }
        Ok((h, z))
    }
}

/// The forward of [C-FUSED-HEAD], outside autograd, with the entropies
/// where `entropy` (two more passes over each chunk).
pub fn forward(x: &HeadTensors, math: &dyn ChunkMath, entropy: bool) -> Result<Forward, HeadError> {
    let want_entropy = entropy;
    let (n, v) = x.check()?;
    tch::no_grad(|| {
        let (mut logp, mut entropy, mut stats) = (vec![], vec![], vec![]);
        let [z_space, work_space] = x.workspaces(n, v)?;
        for (start, rows) in x.chunks(n) {
            let (_, mut z) = x.chunk_logits(start, rows, &z_space)?;
            let mut work = work_space.f_narrow(0, 0, rows)?;
            let targets = x.targets.f_narrow(0, start, rows)?;
            let (l, e, s) = math.forward(&mut z, &mut work, &targets, want_entropy)?;
            logp.push(l);
            entropy.extend(e);
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
            entropy: if want_entropy {
                Some(cat(entropy, &[0])?)
            } else {
                None
            },
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
        let entropy = match (&c, &fwd.entropy) {
            (Some(_), None) => {
                return Err(HeadError::Shape(
                    "the entropy's gradient needs a forward with the entropy".into(),
                ));
            }
            (_, e) => e.as_ref(),
        };
        let hidden = Tensor::f_empty([n, h_dim], (kind, device))?;
        let [z_space, work_space] = x.workspaces(n, v)?;
        for (start, rows) in x.chunks(n) {
            let (h, mut z) = x.chunk_logits(start, rows, &z_space)?;
            let mut work = work_space.f_narrow(0, 0, rows)?;
            let part = |t: &Tensor| t.f_narrow(0, start, rows);
            let c_part = c.as_ref().map(part).transpose()?;
            let mut g = math.backward(
                &mut z,
                &mut work,
                &part(x.targets)?,
                &part(&fwd.stats)?,
                entropy.map(part).transpose()?.as_ref(),
                &part(&a)?,
                c_part.as_ref(),
            )?;
            if x.temperature != 1.0 {
                let _ = g.f_div_scalar_(x.temperature)?;
            }
            if let Some(db) = db.as_mut() {
                let _ =
                    db.f_add_(&g.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?)?;
            }
            let g = if kind == Kind::Float {
                g
            } else {
                g.f_to_kind(kind)?
            };
            let _ = g.f_mm_out(&hidden.f_narrow(0, start, rows)?, x.weight)?;
            if let Some(dw) = dw.as_mut() {
                if kind == Kind::Float {
                    let _ = dw.f_addmm_(&g.f_tr()?, &h)?;
                } else {
                    let _ = dw.f_add_(&g.f_tr()?.f_mm(&h)?.f_to_kind(Kind::Float)?)?;
                }
            }
        }
        Ok(Grads {
            hidden,
            weight: dw,
            bias: db,
        })
    })
}
