//! AdamW with its state in plain tensors (so that checkpoints hold it
//! exactly), global gradient-norm clipping, and the learning-rate schedule.
//!
//! Parameters that are not float32 (bf16 training) are updated through a
//! float32 master copy and rounded into the parameter after each step, so
//! that updates below the parameter's rounding unit still add up.
//!
//! On the CPU, float32 parameters are updated by one fused pass over host
//! memory ([`adamw_host`]) instead of a dozen libtorch passes; on other
//! devices and dtypes the same formula runs as tensor operations
//! ([`adamw_tensors`]). tests/train_optim.rs checks that the two agree.

use std::collections::HashMap;

use rayon::prelude::*;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::LrSchedule;

/// Decoupled-weight-decay Adam (Loshchilov and Hutter), betas (0.9, 0.999),
/// eps 1e-8, over the trainable variables of some `VarStore`s in name order.
pub struct AdamW {
    pub params: Vec<(String, Tensor)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// The float32 master copy of each parameter that is not float32 (`None`
    /// for float32 ones, which are updated in place).
    pub master: Vec<Option<Tensor>>,
    /// Optimizer steps taken.
    pub step: i64,
    pub weight_decay: f64,
    /// Threads of the fused CPU passes (libtorch's intra-op count at
    /// creation; rayon's global pool if it could not be made).
    pool: Option<rayon::ThreadPool>,
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
        let master = params
            .iter()
            .map(|(_, t)| (t.kind() != Kind::Float).then(|| t.detach().to_kind(Kind::Float)))
            .collect();
        AdamW {
            params,
            m,
            v,
            master,
            step: 0,
            weight_decay,
            pool: host_pool(),
        }
    }

    /// Rounds the float32 variables of `vs` (whose parameters this optimizer
    /// updates) to `kind` for compute, keeping their float32 values as the
    /// master copies that every update goes to. Made before the rounding,
    /// the master copies are the float32 weights themselves.
    pub fn lower_precision(&mut self, vs: &mut VarStore, kind: Kind) {
        let names: std::collections::HashSet<String> = vs.variables().into_keys().collect();
        for ((name, p), master) in self.params.iter().zip(&mut self.master) {
            if names.contains(name) && p.kind() == Kind::Float {
                *master = Some(p.detach().copy());
            }
        }
        match kind {
            Kind::BFloat16 => vs.bfloat16(),
            Kind::Half => vs.half(),
            other => vs.set_kind(other),
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
            .map(|g| match host_f32(&g) {
                Some((ptr, n)) => {
                    // SAFETY: `g` is a contiguous float32 CPU tensor of `n`
                    // elements that lives to the end of this closure and
                    // nothing writes to it meanwhile.
                    let g = unsafe { std::slice::from_raw_parts(ptr, n) };
                    on_pool(&self.pool, || sum_squares(g))
                }
                None => g
                    .to_kind(Kind::Double)
                    .square_()
                    .sum(Kind::Double)
                    .double_value(&[]),
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
        let k = Coefficients {
            c1: 1.0 - BETA1.powi(t),
            c2: 1.0 - BETA2.powi(t),
            lr,
            weight_decay: self.weight_decay,
        };
        let pool = &self.pool;
        tch::no_grad(|| {
            let state = self.m.iter_mut().zip(&mut self.v).zip(&mut self.master);
            for ((_, p), ((m, v), master)) in self.params.iter_mut().zip(state) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                match master {
                    Some(w) => {
                        update_f32(w, &g.to_kind(Kind::Float), m, v, &k, pool);
                        p.copy_(w);
                    }
                    None => update_f32(p, &g, m, v, &k, pool),
                }
            }
        });
    }

    /// `m.<name>` and `v.<name>` for every parameter, and `master.<name>`
    /// for those with a master copy.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
            if let Some(w) = &self.master[i] {
                out.push((format!("master.{name}"), w.shallow_clone()));
            }
        }
        out
    }

    /// Takes the state written by [`AdamW::state`] (step count aside). A
    /// master copy missing from it is remade from the parameter, which must
    /// already hold the checkpoint's weights. Every entry must have its
    /// parameter's shape and finite values (`v` also non-negative); the
    /// state is taken only when all of them do. Errors name the entry.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
        let mut loaded = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let get = |k: String, required: bool| -> Result<Option<Tensor>, String> {
                let Some(t) = tensors.get(&k) else {
                    return if required {
                        Err(format!("optimizer state `{k}` missing"))
                    } else {
                        Ok(None)
                    };
                };
                if t.size() != p.size() {
                    return Err(format!(
                        "optimizer state `{k}` has shape {:?}, its parameter {:?}",
                        t.size(),
                        p.size()
                    ));
                }
                let t = t.to_device(p.device()).to_kind(Kind::Float);
                let finite = t.isfinite().all().int64_value(&[]) == 1;
                let signed_ok = !k.starts_with("v.") || t.min().double_value(&[]) >= 0.0;
                if !(finite && signed_ok) {
                    return Err(format!(
                        "optimizer state `{k}` holds NaN, infinite or (for `v`) negative values"
                    ));
                }
                Ok(Some(t))
            };
            let m = get(format!("m.{name}"), true)?.expect("required");
            let v = get(format!("v.{name}"), true)?.expect("required");
            let master = get(format!("master.{name}"), false)?;
            loaded.push((m, v, master));
        }
        for (i, (m, v, master)) in loaded.into_iter().enumerate() {
            self.m[i] = m.to_kind(self.m[i].kind());
            self.v[i] = v.to_kind(self.v[i].kind());
            if let Some(w) = &mut self.master[i] {
                *w = master.unwrap_or_else(|| self.params[i].1.detach().to_kind(Kind::Float));
            }
        }
        Ok(())
    }
}

/// One AdamW update of the float32 tensor `p`: the fused host pass when all
/// four are float32 CPU tensors of one length, libtorch operations otherwise.
fn update_f32(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    k: &Coefficients,
    pool: &Option<rayon::ThreadPool>,
) {
    match [&*p, g, &*m, &*v].map(host_f32) {
        [Some(pp), Some(gp), Some(mp), Some(vp)]
            if pp.1 == gp.1 && pp.1 == mp.1 && pp.1 == vp.1 =>
        {
            // SAFETY: the four are contiguous float32 CPU tensors of the same
            // length with distinct storages (a parameter or its master copy,
            // its gradient, and two state tensors, each made by `AdamW::new`
            // or read by `load_state` into its own storage), alive for this
            // call; nothing else touches them while the pass runs (no
            // autograd graph is being built).
            let (ps, gs, ms, vs) = unsafe {
                (
                    std::slice::from_raw_parts_mut(pp.0 as *mut f32, pp.1),
                    std::slice::from_raw_parts(gp.0, gp.1),
                    std::slice::from_raw_parts_mut(mp.0 as *mut f32, mp.1),
                    std::slice::from_raw_parts_mut(vp.0 as *mut f32, vp.1),
                )
            };
            on_pool(pool, || adamw_host(ps, gs, ms, vs, k));
        }
        _ => adamw_tensors(p, g, m, v, k),
    }
}

/// The scalars of one AdamW step: bias corrections `1 - beta^t`, the
/// learning rate and the decoupled weight decay.
#[derive(Clone, Copy, Debug)]
pub struct Coefficients {
    pub c1: f64,
    pub c2: f64,
    pub lr: f64,
    pub weight_decay: f64,
}

/// One AdamW update as libtorch tensor operations, for any device and dtype
/// (the state is float32): `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p -= lr ((m / c1) / (sqrt(v / c2) + eps) + wd p)`.
pub fn adamw_tensors(p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, k: &Coefficients) {
    let g = g.to_kind(Kind::Float);
    let _ = m.g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
    let _ = v.g_mul_scalar_(BETA2).g_add_(&(g.square() * (1.0 - BETA2)));
    // In place on two temporaries: these tensors are as large as the
    // embeddings, and each extra pass costs.
    let mut update = &*m / k.c1;
    let mut denom = &*v / k.c2;
    let _ = denom.sqrt_().g_add_scalar_(EPS);
    let _ = update.g_div_(&denom);
    if k.weight_decay != 0.0 {
        let _ = update.g_add_(&(p.to_kind(Kind::Float) * k.weight_decay));
    }
    let _ = update.g_mul_scalar_(k.lr);
    let _ = p.g_sub_(&update.to_kind(p.kind()));
}

/// [`adamw_tensors`] for float32 host slices in one pass, the same float32
/// operations in the same order (scalars rounded to float32 first, as
/// libtorch does for float32 tensors), split over the current rayon pool.
pub fn adamw_host(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Coefficients) {
    let s = HostScalars {
        b1: BETA1 as f32,
        nb1: (1.0 - BETA1) as f32,
        b2: BETA2 as f32,
        nb2: (1.0 - BETA2) as f32,
        c1: k.c1 as f32,
        c2: k.c2 as f32,
        eps: EPS as f32,
        lr: k.lr as f32,
        wd: k.weight_decay as f32,
    };
    let decay = k.weight_decay != 0.0;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            // Two monomorphic loops: a branch inside one stops it vectorising.
            if decay {
                adamw_chunk::<true>(p, g, m, v, &s);
            } else {
                adamw_chunk::<false>(p, g, m, v, &s);
            }
        });
}

/// [`adamw_host`]'s scalars, rounded to float32.
struct HostScalars {
    b1: f32,
    nb1: f32,
    b2: f32,
    nb2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    lr: f32,
    wd: f32,
}

fn adamw_chunk<const DECAY: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &HostScalars,
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        m[i] = m[i] * s.b1 + g[i] * s.nb1;
        v[i] = v[i] * s.b2 + g[i] * g[i] * s.nb2;
        let mut update = (m[i] / s.c1) / ((v[i] / s.c2).sqrt() + s.eps);
        if DECAY {
            update += p[i] * s.wd;
        }
        p[i] -= update * s.lr;
    }
}

/// `sum x^2` in float64, in a fixed order whatever the pool does: each
/// chunk keeps eight running sums (element `i` goes to sum `i mod 8`), and
/// the chunks' totals are added in chunk order.
fn sum_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0.0f64; 8];
            let lanes = c.chunks_exact(8);
            let tail: f64 = lanes
                .remainder()
                .iter()
                .map(|&a| f64::from(a) * f64::from(a))
                .sum();
            for l in lanes {
                for (s, &a) in acc.iter_mut().zip(l) {
                    *s += f64::from(a) * f64::from(a);
                }
            }
            acc.iter().sum::<f64>() + tail
        })
        .collect();
    parts.iter().sum()
}

/// Elements per unit of work of the host passes.
const CHUNK: usize = 1 << 15;

/// `(pointer, length)` of a contiguous float32 CPU tensor's elements.
fn host_f32(t: &Tensor) -> Option<(*const f32, usize)> {
    (t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous())
        .then(|| (t.data_ptr() as *const f32, t.numel()))
}

/// Runs `f` on `pool` (rayon's global pool when there is none).
fn on_pool<R: Send>(pool: &Option<rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// A rayon pool with libtorch's current intra-op thread count.
fn host_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(tch::get_num_threads().max(1) as usize)
        .build()
        .ok()
}

/// The learning rate at optimizer step `step` (0-based) of `total`: linear
/// warm-up over `warmup` steps, then constant, linear or cosine decay to 0.
pub fn learning_rate(
    peak: f64,
    schedule: LrSchedule,
    warmup: usize,
    step: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Linear => peak * (1.0 - progress),
        LrSchedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
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
