//! Token log-probs computed outside libtorch's autograd ([C-TOKEN-LOGPROB]),
//! chained back into it: the `kernels` config key of `p3o train`.
//!
//! libtorch's autograd cannot call a foreign backward, so the trainer runs a
//! two-phase backward around a log-prob computed elsewhere. `reference`
//! runs it on materialised logits with the float64 reference
//! (`crate::reference::tokens`), slow but a check of the chaining itself on
//! any machine:
//! 1. forward: `logp` (and what its backward needs, e.g. the log-sum-exp)
//!    from the detached logits; `logp` enters the loss as a leaf tensor;
//! 2. `g = d loss / d logp` by autograd, keeping the graph;
//! 3. `d loss / d logits = g ([v = t] - softmax)` by the same outside code;
//! 4. one backward of `loss + sum(logits * d loss / d logits)` (the second
//!    term's gradient with respect to the model is exactly the chained one,
//!    and everything else in the loss, such as PPO's value head, flows as
//!    usual).
//!
//! With `torch` and `cuda` the outside code is the fused LM head
//! ([C-FUSED-HEAD], `crate::ops::fused_head`): it starts from the hidden
//! states rather than logits, recomputes the logits chunk by chunk in step
//! 3 and gives `d loss / d hidden` and `d loss / d W`, so step 4 backwards
//! `loss + sum(hidden * d loss / d hidden) + sum(W * d loss / d W)`.
//! `torch` runs each chunk's softmax with libtorch ops; `cuda` (feature
//! `cuda`) with the hand-written token kernels, one read of a chunk's
//! logits forward and one read and write backward; the pair losses
//! of P3O-V1, P3O-V2 and DPO come from their kernels too
//! ([`Kernels::pair_loss`]), and so do the sequence sums of log-probs that
//! need no gradient ([`Kernels::sequence_sums`]) and PPO's advantages
//! ([`Kernels::gae`]). `cuda-host` runs the same kernel sources on CPU
//! tensors (`crate::cuda::host`): very slow, a check of the kernels inside
//! the trainer on machines without a GPU.

#[cfg(feature = "cuda")]
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::config::KernelBackend;
use super::error::TrainError;
use super::losses::{self, GroupBatch, PairBatch};
#[cfg(feature = "cuda")]
use crate::cuda::{ops::PairInputs, torch_ops::TensorKernels};
use crate::device::DeviceSpec;
#[cfg(feature = "cuda")]
use crate::ops::fused_head::cuda::KernelMath;
use crate::ops::fused_head::reference::{entropy as reference_entropy, log_softmax};
use crate::ops::fused_head::torch::TorchMath;
use crate::ops::fused_head::{self, ChunkMath, HeadTensors};
use crate::reference::tokens::{token_logprob, token_logprob_grad};
use crate::reference::{Algorithm, Hyper};
use crate::torch::LanguageModel;
use crate::torch::TorchError;

/// Per-token float64 quantities of a rollout, one row per response.
pub type TokenRows = Vec<Vec<f64>>;

/// Where the token log-probs of the training forward (and, with the
/// kernels, the pair losses) come from, and the rows per chunk of the
/// fused LM head ([C-FUSED-HEAD]).
#[derive(Clone)]
pub struct Kernels {
    backend: Backend,
    /// Rows per chunk of the fused head; 0 picks
    /// [`fused_head::default_chunk`].
    head_chunk: i64,
}

#[derive(Clone)]
enum Backend {
    /// libtorch ops: the fused head's chunks ([`fused_head::torch`]).
    Torch,
    /// libtorch ops under autograd on the materialised `[.., V]` logits
    /// (gather minus log-sum-exp).
    Materialised,
    /// The float64 reference on materialised logits, chained by the
    /// two-phase backward.
    Reference,
    /// The kernels of `kernels/token_logprob.cu`, on the GPU or run on the
    /// CPU, over the fused head's chunks; chained likewise.
    #[cfg(feature = "cuda")]
    Cuda(Arc<dyn TensorKernels>),
}

/// A log-prob computed outside autograd: the leaf the loss is built on and
/// what its backward needs.
pub struct Detached {
    /// `logp` `[..]`, a leaf that requires grad.
    pub leaf: Tensor,
    source: Source,
}

/// Where a [`Detached`] log-prob came from.
enum Source {
    /// Materialised logits `[.., V]` with their graph to the model (the
    /// float64 reference recomputes each row's log-sum-exp).
    Logits { logits: Tensor, targets: Tensor },
    /// The fused head over hidden states `[N, H]` with their graph to the
    /// model, and the head's parameters.
    Head {
        hidden: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        targets: Tensor,
        chunk: i64,
        fwd: fused_head::Forward,
        math: Box<dyn ChunkMath>,
    },
}

/// Token log-probs from hidden states: `lp [..]` (a leaf of a
/// [`Detached`] where one is returned), the entropy `[..]` of each row's
/// softmax (no gradient) in the passes that need gradients (the training
/// passes, which report it), and the [`Detached`].
pub struct HeadLogprobs {
    pub lp: Tensor,
    pub entropy: Option<Tensor>,
    pub detached: Option<Detached>,
}

impl Kernels {
    /// libtorch ops, the fused head's chunks sized by default.
    pub const TORCH: Kernels = Kernels {
        backend: Backend::Torch,
        head_chunk: 0,
    };

    /// libtorch ops under autograd on materialised logits: no [`Detached`]
    /// to chain, so a plain `loss.backward()` follows (SFT; config key
    /// `fused_head = false`).
    pub const MATERIALISED: Kernels = Kernels {
        backend: Backend::Materialised,
        head_chunk: 0,
    };

    /// The float64 reference.
    pub const REFERENCE: Kernels = Kernels {
        backend: Backend::Reference,
        head_chunk: 0,
    };

    /// These kernels with the head materialised instead of fused (config
    /// key `fused_head = false`); only `torch` has that choice.
    pub fn materialised(self) -> Kernels {
        match self.backend {
            Backend::Torch => Kernels::MATERIALISED,
            _ => self,
        }
    }

    /// These kernels with `rows` rows per chunk of the fused head (0: the
    /// default).
    pub fn with_head_chunk(self, rows: usize) -> Kernels {
        Kernels {
            head_chunk: rows as i64,
            ..self
        }
    }

    /// The backend of config key `kernels` for a run on `device`
    /// ([`KernelBackend::check_against`] says which combinations exist).
    pub fn new(backend: KernelBackend, device: Device) -> Result<Kernels, TrainError> {
        let spec = match device {
            Device::Cuda(n) => DeviceSpec::Cuda(n),
            _ => DeviceSpec::Cpu,
        };
        backend.check_against(spec)?;
        let backend = match backend {
            KernelBackend::Torch => Backend::Torch,
            KernelBackend::Reference => Backend::Reference,
            #[cfg(feature = "cuda")]
            KernelBackend::Cuda => {
                let ordinal = if let DeviceSpec::Cuda(n) = spec { n } else { 0 };
                crate::cuda::Gpu::new(ordinal)
                    .map(|g| Backend::Cuda(Arc::new(g)))
                    .map_err(|e| TrainError::Input(format!("config key `kernels`: `cuda`: {e}")))?
            }
            #[cfg(feature = "cuda")]
            KernelBackend::CudaHost => Backend::Cuda(Arc::new(crate::cuda::host::Host)),
            #[cfg(not(feature = "cuda"))]
            KernelBackend::Cuda | KernelBackend::CudaHost => {
                unreachable!("check_against refuses the kernels in a build without `cuda`")
            }
        };
        Ok(Kernels {
            backend,
            head_chunk: 0,
        })
    }

    /// The batch mean of the per-pair loss of `alg` ([`losses::pair_loss`]).
    /// With `cuda` (or `cuda-host`), P3O-V1, P3O-V2 and DPO come from the
    /// pair kernels of `kernels/pair_losses.cu`: their per-pair derivatives
    /// `g` enter autograd as the surrogate `mean(g1 lp1 + g2 lp2)`, whose
    /// value is replaced by the kernels' loss.
    pub fn pair_loss(
        &self,
        alg: Algorithm,
        h: &Hyper,
        b: &PairBatch,
    ) -> Result<Tensor, TrainError> {
        #[cfg(feature = "cuda")]
        if let (Backend::Cuda(kernels), Algorithm::P3oV1 | Algorithm::P3oV2 | Algorithm::Dpo) =
            (&self.backend, alg)
        {
            let f32s = |t: &[&Tensor; 2]| t.map(|t| t.detach().to_kind(Kind::Float).contiguous());
            let x = PairInputs {
                lp: f32s(&b.lp),
                lp_old: f32s(&b.lp_old),
                lp_ref: f32s(&b.lp_ref),
                reward: b.reward.map(|t| t.to_kind(Kind::Double).contiguous()),
            };
            let out = kernels.pair_loss_tensor(alg, &x, h.beta, h.epsilon)?;
            let kind = b.lp[0].kind();
            let surrogate = (out.grad[0].to_kind(kind) * b.lp[0]
                + out.grad[1].to_kind(kind) * b.lp[1])
                .mean(kind);
            let value = out.loss.mean(Kind::Float).to_kind(kind);
            return Ok(&surrogate + (value - &surrogate).detach());
        }
        Ok(losses::pair_loss(alg, h, b)?)
    }

    /// The mean over groups of `alg`'s group loss
    /// ([`losses::group_loss`]); a pairwise algorithm's pairs go through
    /// [`Self::pair_loss`], so with `cuda` P3O and DPO over groups use the
    /// pair kernels.
    pub fn group_loss(
        &self,
        alg: Algorithm,
        h: &Hyper,
        b: &GroupBatch,
    ) -> Result<Tensor, TrainError> {
        if alg.is_pairwise() {
            return losses::mean_over_pairs(b, |p| self.pair_loss(alg, h, p));
        }
        Ok(losses::group_loss(alg, h, b)?)
    }

    /// Sequence log-probs without gradient ([C-SEQ-LOGPROB]): the sums of
    /// `lp [n, l]` over the last dimension where `mask` is 1. With `cuda`
    /// (or `cuda-host`) from the `masked_seq_sum` kernel.
    pub fn sequence_sums(&self, lp: &Tensor, mask: &Tensor) -> Result<Tensor, TrainError> {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(kernels) = &self.backend {
            let f32s = |t: &Tensor| t.detach().to_kind(Kind::Float).contiguous();
            return kernels
                .masked_seq_sum_tensor(&f32s(lp), None, &f32s(mask))
                .map_err(TrainError::from);
        }
        Ok(crate::torch::logprobs::sequence_logprobs(
            &lp.detach(),
            mask,
        ))
    }

    /// Advantages and value targets of `n` rows of `l` tokens ([C-GAE]):
    /// per-token rewards, the rollout's values and the response mask. With
    /// `cuda` (or `cuda-host`) from the `gae_reverse_scan` kernel (float32
    /// inputs and outputs, float64 inside), else the float64 reference.
    pub fn gae(
        &self,
        rewards: &TokenRows,
        values: &TokenRows,
        mask: &TokenRows,
        gamma: f64,
        lambda: f64,
    ) -> Result<(TokenRows, TokenRows), TrainError> {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(kernels) = &self.backend {
            let (n, l) = (rewards.len(), rewards.first().map_or(0, Vec::len));
            let device = kernels.device();
            let tensor = |rows: &TokenRows| {
                let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
                Tensor::from_slice(&flat)
                    .view([n as i64, l as i64])
                    .to_device(device)
            };
            let (adv, ret) = kernels.gae_tensor(
                &tensor(rewards),
                &tensor(values),
                &tensor(mask),
                gamma,
                lambda,
            )?;
            let rows = |t: &Tensor| -> Result<TokenRows, TrainError> {
                let flat = host_f64(t)?;
                Ok((0..n).map(|i| flat[i * l..(i + 1) * l].to_vec()).collect())
            };
            return Ok((rows(&adv)?, rows(&ret)?));
        }
        Ok(rewards
            .iter()
            .zip(values)
            .zip(mask)
            .map(|((r, v), m)| crate::reference::gae::gae(r, v, m, gamma, lambda))
            .unzip())
    }

    /// Token log-probs `[..]` of `targets [..]` after `hidden [.., H]`
    /// under `model`'s LM head, and their entropies: the fused head
    /// ([C-FUSED-HEAD], no `[.., V]` logits) with `torch` and `cuda`, the
    /// float64 reference on materialised logits with `reference`. Where the
    /// hidden states or the head need gradients, the log-probs are the leaf
    /// of the returned [`Detached`], whose [`backward`] must follow.
    pub fn head_logprobs(
        &self,
        model: &LanguageModel,
        hidden: &Tensor,
        targets: &Tensor,
    ) -> Result<HeadLogprobs, TrainError> {
        let math: Box<dyn ChunkMath> = match &self.backend {
            Backend::Reference => return reference_logprobs(model, hidden, targets),
            Backend::Materialised => {
                let logits = model.logits(hidden)?;
                let entropy = logits.requires_grad().then(|| {
                    tch::no_grad(|| {
                        let log_p = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
                        -(log_p.exp() * &log_p).sum_dim_intlist(
                            [-1i64].as_slice(),
                            false,
                            Kind::Float,
                        )
                    })
                });
                return Ok(HeadLogprobs {
                    lp: crate::torch::logprobs::token_logprobs(&logits, targets),
                    entropy,
                    detached: None,
                });
            }
            Backend::Torch => Box::new(TorchMath),
            #[cfg(feature = "cuda")]
            Backend::Cuda(kernels) => Box::new(KernelMath(kernels.clone())),
        };
        let (weight, bias) = model.lm_head_parameters()?;
        let h = *hidden
            .size()
            .last()
            .expect("hidden states have a feature dimension");
        let flat = hidden.reshape([-1, h]);
        let flat_targets = targets.reshape([-1]);
        let chunk = if self.head_chunk > 0 {
            self.head_chunk
        } else {
            fused_head::default_chunk(weight.size()[0])
        };
        let (hd, wd, bd) = (flat.detach(), weight.detach(), bias.map(Tensor::detach));
        let x = HeadTensors {
            hidden: &hd,
            weight: &wd,
            bias: bd.as_ref(),
            targets: &flat_targets,
            temperature: 1.0,
            chunk,
        };
        let grads = flat.requires_grad() || records(weight) || bias.is_some_and(records);
        let fwd = fused_head::forward(&x, &*math, grads)?;
        let shape = targets.size();
        let entropy = fwd.entropy.as_ref().map(|e| e.reshape(&shape));
        let lp = fwd.logp.reshape(&shape);
        if !grads {
            return Ok(HeadLogprobs {
                lp,
                entropy,
                detached: None,
            });
        }
        let leaf = lp.set_requires_grad(true);
        Ok(HeadLogprobs {
            lp: leaf.shallow_clone(),
            entropy,
            detached: Some(Detached {
                leaf,
                source: Source::Head {
                    hidden: flat,
                    weight: weight.shallow_clone(),
                    bias: bias.map(Tensor::shallow_clone),
                    targets: flat_targets,
                    chunk,
                    fwd,
                    math,
                },
            }),
        })
    }
}

/// [`Kernels::head_logprobs`] by the float64 reference on the materialised
/// logits ([C-TOKEN-LOGPROB]): a check of the chaining into autograd.
fn reference_logprobs(
    model: &LanguageModel,
    hidden: &Tensor,
    targets: &Tensor,
) -> Result<HeadLogprobs, TrainError> {
    let logits = model.logits(hidden)?;
    let (rows, v) = flat_rows(&logits);
    let x = host_f64(&logits.detach().reshape([rows, v]))?;
    let t = Vec::<i64>::try_from(&targets.reshape([rows]).to_device(Device::Cpu))
        .map_err(TorchError::from)?;
    let v = v as usize;
    let (logp, entropy): (Vec<f64>, Vec<f64>) = (0..rows as usize)
        .map(|r| {
            let row = &x[r * v..(r + 1) * v];
            (
                token_logprob(row, t[r] as usize).0,
                reference_entropy(&log_softmax(row)),
            )
        })
        .unzip();
    let to_tensor = |x: &[f64]| {
        Tensor::from_slice(x)
            .to_kind(Kind::Float)
            .reshape(targets.size())
            .to_device(logits.device())
    };
    let entropy = logits.requires_grad().then(|| to_tensor(&entropy));
    if !logits.requires_grad() {
        return Ok(HeadLogprobs {
            lp: to_tensor(&logp),
            entropy,
            detached: None,
        });
    }
    let leaf = to_tensor(&logp).set_requires_grad(true);
    Ok(HeadLogprobs {
        lp: leaf.shallow_clone(),
        entropy,
        detached: Some(Detached {
            leaf,
            source: Source::Logits {
                logits,
                targets: targets.shallow_clone(),
            },
        }),
    })
}

/// Backpropagates `loss` into every parameter it depends on, through
/// `detached` when the log-probs were computed outside autograd.
pub fn backward(loss: &Tensor, detached: Option<&Detached>) -> Result<(), TrainError> {
    let Some(d) = detached else {
        loss.backward();
        return Ok(());
    };
    let g = Tensor::f_run_backward(&[loss], &[&d.leaf], true, false)
        .map_err(TorchError::from)?
        .pop()
        .expect("one input, one gradient");
    let chained = match &d.source {
        Source::Logits { logits, targets } => {
            let (rows, v) = flat_rows(logits);
            let x = host_f64(&logits.detach().reshape([rows, v]))?;
            let t = Vec::<i64>::try_from(&targets.reshape([rows]).to_device(Device::Cpu))
                .map_err(TorchError::from)?;
            let g = host_f64(&g.reshape([rows]))?;
            let v = v as usize;
            let grad: Vec<f64> = (0..rows as usize)
                .flat_map(|r| token_logprob_grad(&x[r * v..(r + 1) * v], t[r] as usize, g[r]))
                .collect();
            let grad = Tensor::from_slice(&grad)
                .reshape(logits.size())
                .to_kind(logits.kind())
                .to_device(logits.device());
            (logits * grad).sum(Kind::Float)
        }
        Source::Head {
            hidden,
            weight,
            bias,
            targets,
            chunk,
            fwd,
            math,
        } => {
            let (hd, wd, bd) = (
                hidden.detach(),
                weight.detach(),
                bias.as_ref().map(Tensor::detach),
            );
            let x = HeadTensors {
                hidden: &hd,
                weight: &wd,
                bias: bd.as_ref(),
                targets,
                temperature: 1.0,
                chunk: *chunk,
            };
            let head_grads = weight.requires_grad();
            let grads = fused_head::backward(&x, &**math, fwd, &g.reshape([-1]), None, head_grads)?;
            // Each term's gradient with respect to its tensor is exactly
            // that tensor's chained gradient.
            let mut chained = (hidden * grads.hidden).sum(Kind::Float);
            if let Some(dw) = grads.weight {
                chained += (weight * dw.to_kind(weight.kind())).sum(Kind::Float);
            }
            if let (Some(b), Some(db)) = (bias, grads.bias)
                && b.requires_grad()
            {
                chained += (b * db.to_kind(b.kind())).sum(Kind::Float);
            }
            chained
        }
    };
    (loss + chained).backward();
    Ok(())
}

/// Whether autograd records operations on the parameter `t` here: not
/// under `tch::no_grad` (the reference's and other passes without
/// gradient), where the result of an operation on it (one entry negated;
/// a view alone would keep `requires_grad`) does not require grad.
fn records(t: &Tensor) -> bool {
    t.requires_grad()
        && t.f_flatten(0, -1)
            .and_then(|f| f.f_narrow(0, 0, 1))
            .and_then(|v| v.f_neg())
            .is_ok_and(|v| v.requires_grad())
}

/// `(rows, V)` of a `[.., V]` tensor.
fn flat_rows(logits: &Tensor) -> (i64, i64) {
    let size = logits.size();
    let v = *size.last().expect("logits have a vocabulary dimension");
    (size.iter().rev().skip(1).product(), v)
}

fn host_f64(t: &Tensor) -> Result<Vec<f64>, TrainError> {
    Ok(
        Vec::<f64>::try_from(&t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1]))
            .map_err(TorchError::from)?,
    )
}
