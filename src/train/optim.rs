//! AdamW with its state in plain tensors (so that checkpoints hold it
//! exactly), global gradient-norm clipping, and the learning-rate schedule.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Decoupled-weight-decay Adam (Loshchilov and Hutter), betas (0.9, 0.999),
/// eps 1e-8, over the trainable variables of some `VarStore`s in name order.
pub struct AdamW {
    pub params: Vec<(String, Tensor)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken.
    pub step: i64,
    pub weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl AdamW {
    pub fn new(stores: &[&VarStore], weight_decay: f64) -> AdamW {
        let mut params: Vec<(String, Tensor)> = stores
            .iter()
            .flat_map(|vs| vs.variables())
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |t: &Tensor| Tensor::zeros(t.size().as_slice(), (Kind::Float, t.device()));
        let m = params.iter().map(|(_, t)| zeros(t)).collect();
        let v = params.iter().map(|(_, t)| zeros(t)).collect();
        AdamW {
            params,
            m,
            v,
            step: 0,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The global L2 norm of the gradients (NaN or inf when any is).
    pub fn grad_norm(&self) -> f64 {
        let sq: f64 = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| {
                g.to_kind(Kind::Double)
                    .square_()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum();
        sq.sqrt()
    }

    /// Scales the gradients so that their global norm is at most `max`
    /// (when `max > 0`); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let norm = self.grad_norm();
        if max > 0.0 && norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        tch::no_grad(|| {
            for (((_, p), m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
                let _ = v.g_mul_scalar_(BETA2).g_add_(&(g.square() * (1.0 - BETA2)));
                // update = (m / c1) / (sqrt(v / c2) + eps) + wd p, then
                // p -= lr update: the same operations in the same order, in
                // place on two temporaries (these tensors are as large as the
                // embeddings, and each extra pass costs).
                let mut update = &*m / c1;
                let mut denom = &*v / c2;
                let _ = denom.sqrt_().g_add_scalar_(EPS);
                let _ = update.g_div_(&denom);
                if self.weight_decay != 0.0 {
                    let _ = update.g_add_(&(p.to_kind(Kind::Float) * self.weight_decay));
                }
                let _ = update.g_mul_scalar_(lr);
                let _ = p.g_sub_(&update.to_kind(p.kind()));
            }
        });
    }

    /// `m.<name>` and `v.<name>` for every parameter.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`: linear
/// warm-up over `warmup` steps, then constant, linear or cosine decay to 0.
pub fn learning_rate(peak: f64, schedule: &str, warmup: usize, step: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        "linear" => peak * (1.0 - progress),
        "cosine" => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        _ => peak,
    }
}

/// One plain optimizer step on `loss`: zeroes the gradients, backpropagates,
/// clips the global norm to `max_grad_norm` (0: no clip) and steps at `lr`.
/// Returns the loss and the gradient norm before clipping; a non-finite loss
/// is returned as `Err` before any update.
pub fn descend(
    opt: &mut AdamW,
    loss: &Tensor,
    max_grad_norm: f64,
    lr: f64,
) -> Result<(f64, f64), f64> {
    let value = loss.double_value(&[]);
    if !value.is_finite() {
        return Err(value);
    }
    opt.zero_grad();
    loss.backward();
    let norm = if max_grad_norm > 0.0 {
        opt.clip_grad_norm(max_grad_norm)
    } else {
        opt.grad_norm()
    };
    opt.step(lr);
    Ok((value, norm))
}
