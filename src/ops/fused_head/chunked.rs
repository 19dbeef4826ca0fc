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
    /// Columns of the per-row stats the forward keeps for the backward.
    fn stats_width(&self) -> i64;

    /// `(logp [C], entropy [C] where asked for, stats [C, k])`, float32;
    /// `stats` holds per row the maximum `m` and `s = log sum exp(z - m)`
    /// (and what else the math's backward needs).
    fn forward(
        &self,
        z: &mut Tensor,
        work: &mut Tensor,
        targets: &Tensor,
        entropy: bool,
    ) -> Result<(Tensor, Option<Tensor>, Tensor), HeadError>;

    /// `G = d loss / d z [N, B]` of a vocabulary block of every row,
    /// float32 (`work` itself, or a tensor of the math's own), from the
    /// block's logits `z`, the targets relative to the block (outside `0..B`
    /// where the target lies in another block), the forward's `stats` and
    /// `entropy`, `a = d loss / d logp [N]` and `c = d loss / d entropy`
    /// (which needs the forward's entropy).
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

/// The forward's outputs, all `[N]` float32 but `stats [N, k]` (`k` the
/// math's [`ChunkMath::stats_width`]): the
/// backward needs `stats` (and `entropy` for the entropy's gradient; O(N),
/// [C-FUSED-HEAD]).
pub struct Forward {
    pub logp: Tensor,
    /// Present where the forward was asked for it.
    pub entropy: Option<Tensor>,
    pub stats: Tensor,
}

/// The gradients, where asked for: `hidden [N, H]` in the hidden states'
/// type (summed over vocabulary blocks in float32); `weight [V, H]` in the
/// weight's type (each block written once); `bias [V]` float32.
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

    /// Columns per vocabulary block of the backward: as many logits as a
    /// forward chunk (`C V`), over all `n` rows.
    fn vocab_block(&self, n: i64, v: i64) -> i64 {
        (self.chunk.saturating_mul(v) / n.max(1)).clamp(1, v)
    }

    /// The logits of vocabulary entries `first .. first + cols` for every
    /// row, written into `z`'s first `n * cols` entries (float32 `[n,
    /// cols]`, contiguous).
    fn block_logits(&self, first: i64, cols: i64, space: &Tensor) -> Result<Tensor, HeadError> {
        let n = self.hidden.size()[0];
        let mut z = space
            .f_view([-1])?
            .f_narrow(0, 0, n * cols)?
            .f_view([n, cols])?;
        let w = self.weight.f_narrow(0, first, cols)?;
        let b = self.bias.map(|b| b.f_narrow(0, first, cols)).transpose()?;
        if self.hidden.kind() == Kind::Float && self.weight.kind() == Kind::Float {
            let _ = self.hidden.f_mm_out(&z, &w.f_tr()?)?;
            if let Some(b) = b {
                let _ = z.f_add_(&b)?;
            }
        } else {
            z.f_copy_(&self.hidden.f_linear(&w, b.as_ref())?)?;
        }
        if self.temperature != 1.0 {
            let _ = z.f_div_scalar_(self.temperature)?;
        }
        Ok(z)
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
            stats: cat(stats, &[0, math.stats_width()])?,
        })
    })
}

/// The backward of [C-FUSED-HEAD], outside autograd, for `grad_logp [N]`
/// and optionally `grad_entropy [N]`; the weight's and bias's gradients
/// only where `weight_grads`. It takes the vocabulary in blocks of `B =
/// C V / N` columns (as many logits as a forward chunk, all rows at once),
/// so that each block of `d loss / d W` is one product over every row,
/// written once in the weight's type, and only `d loss / d h [N, H]` is
/// summed over blocks (in float32).
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
        let a = grad_logp.f_to_kind(Kind::Float)?;
        let c = grad_entropy.map(|c| c.f_to_kind(Kind::Float)).transpose()?;
        if c.is_some() && fwd.entropy.is_none() {
            return Err(HeadError::Shape(
                "the entropy's gradient needs a forward with the entropy".into(),
            ));
        }
        let mut dh = Tensor::f_zeros([n, h_dim], (Kind::Float, device))?;
        if n == 0 {
            return Ok(Grads {
                hidden: dh.f_to_kind(kind)?,
                weight: None,
                bias: None,
            });
        }
        let mut dw = if weight_grads {
            Some(Tensor::f_empty([v, h_dim], (x.weight.kind(), device))?)
        } else {
            None
        };
        let db = match (weight_grads, x.bias) {
            (true, Some(_)) => Some(Tensor::f_empty([v], (Kind::Float, device))?),
            _ => None,
        };
        let block = x.vocab_block(n, v);
        let opts = (Kind::Float, device);
        let (z_space, work_space) = (
            Tensor::f_empty([n, block], opts)?,
            Tensor::f_empty([n, block], opts)?,
        );
        for first in (0..v).step_by(block as usize) {
            let cols = block.min(v - first);
            let mut z = x.block_logits(first, cols, &z_space)?;
            // Contiguous rows of `cols` (the last block may be narrower).
            let mut work = work_space
                .f_view([-1])?
                .f_narrow(0, 0, n * cols)?
                .f_view([n, cols])?;
            let targets = x.targets.f_sub_scalar(first)?;
            let mut g = math.backward(
                &mut z,
                &mut work,
                &targets,
                &fwd.stats,
                fwd.entropy.as_ref(),
                &a,
                c.as_ref(),
            )?;
            if x.temperature != 1.0 {
                let _ = g.f_div_scalar_(x.temperature)?;
            }
            if let Some(db) = db.as_ref() {
                db.f_narrow(0, first, cols)?.f_copy_(&g.f_sum_dim_intlist(
                    [0i64].as_slice(),
                    false,
                    Kind::Float,
                )?)?;
            }
            let w = x.weight.f_narrow(0, first, cols)?;
            let g = if kind == Kind::Float {
                g
            } else {
                g.f_to_kind(kind)?
            };
            if kind == Kind::Float {
                let _ = dh.f_addmm_(&g, &w)?;
            } else {
                let _ = dh.f_add_(&g.f_mm(&w)?)?;
            }
            if let Some(dw) = dw.as_mut() {
                let _ = g
                    .f_tr()?
                    .f_mm_out(&dw.f_narrow(0, first, cols)?, x.hidden)?;
            }
        }
        Ok(Grads {
            hidden: if kind == Kind::Float {
                dh
            } else {
                dh.f_to_kind(kind)?
            },
            weight: dw,
            bias: db,
        })
    })
}
