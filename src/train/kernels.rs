//! Token log-probs computed outside libtorch's autograd ([C-TOKEN-LOGPROB]),
//! chained back into it: the `kernels` config key of `p3o train`.
//!
//! libtorch's autograd cannot call a foreign backward, so the trainer runs a
//! two-phase backward around a log-prob computed elsewhere:
//! 1. forward: `logp` (and what its backward needs, e.g. the log-sum-exp)
//!    from the detached logits; `logp` enters the loss as a leaf tensor;
//! 2. `g = d loss / d logp` by autograd, keeping the graph;
//! 3. `d loss / d logits = g ([v = t] - softmax)` by the same outside code;
//! 4. one backward of `loss + sum(logits * d loss / d logits)` (the second
//!    term's gradient with respect to the model is exactly the chained one,
//!    and everything else in the loss, such as PPO's value head, flows as
//!    usual).
//!
//! `reference` runs steps 1 and 3 with the float64 reference
//! (`crate::reference::tokens`): slow, but it checks the chaining itself on
//! any machine. `cuda` (feature `cuda`) runs them with the hand-written
//! kernels on the logits where they are, one read of the logits forward and
//! one read and write backward, and no `[N, V]` log-softmax; the pair losses
//! of P3O-V1, P3O-V2 and DPO come from their kernels too
//! ([`Kernels::pair_loss`]), and so do the sequence sums of log-probs that
//! need no gradient ([`Kernels::sequence_sums`]) and PPO's advantages
//! ([`Kernels::gae`]). `cuda-host` runs the same kernel sources on CPU
//! tensors (`crate::cuda::host`): very slow, a check of the kernels inside
//! the trainer on machines without a GPU.

use tch::{Device, Kind, Tensor};

use super::config::KernelBackend;
use super::error::TrainError;
use super::losses::{self, GroupBatch, PairBatch};
#[cfg(feature = "cuda")]
use crate::cuda::{ops::PairInputs, torch_ops::TensorKernels};
use crate::device::DeviceSpec;
use crate::reference::tokens::{token_logprob, token_logprob_grad};
use crate::reference::{Algorithm, Hyper};
use crate::torch::TorchError;

/// Per-token float64 quantities of a rollout, one row per response.
pub type TokenRows = Vec<Vec<f64>>;

/// Where the token log-probs of the training forward (and, with the
/// kernels, the pair losses) come from.
#[derive(Clone)]
pub enum Kernels {
    /// libtorch ops under autograd (gather minus log-sum-exp).
    Torch,
    /// The float64 reference, chained by the two-phase backward.
    Reference,
    /// The kernels of `kernels/token_logprob.cu`, on the GPU or run on the
    /// CPU, chained likewise.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<dyn TensorKernels>),
}

/// What the backward of an outside log-prob needs besides the logits.
enum Saved {
    /// Nothing: the float64 reference recomputes each row's log-sum-exp.
    Reference,
    /// The kernels' `[2N]` log-sum-exp, beside the logits, and the kernels.
    #[cfg(feature = "cuda")]
    Device {
        kernels: std::sync::Arc<dyn TensorKernels>,
        lse: Tensor,
    },
}

/// A log-prob computed outside autograd: the leaf the loss is built on and
/// what its backward needs.
pub struct Detached {
    /// `logp` `[..]`, a leaf that requires grad.
    pub leaf: Tensor,
    /// The logits `[.., V]` with their graph to the model.
    logits: Tensor,
    targets: Tensor,
    saved: Saved,
}

impl Kernels {
    /// The backend of config key `kernels` for a run on `device`
    /// ([`KernelBackend::check_against`] says which combinations exist).
    pub fn new(backend: KernelBackend, device: Device) -> Result<Kernels, TrainError> {
        let spec = match device {
            Device::Cuda(n) => DeviceSpec::Cuda(n),
            _ => DeviceSpec::Cpu,
        };
        backend.check_against(spec)?;
        match backend {
            KernelBackend::Torch => Ok(Kernels::Torch),
            KernelBackend::Reference => Ok(Kernels::Reference),
            #[cfg(feature = "cuda")]
            KernelBackend::Cuda => {
                let ordinal = if let DeviceSpec::Cuda(n) = spec { n } else { 0 };
                crate::cuda::Gpu::new(ordinal)
                    .map(|g| Kernels::Cuda(std::sync::Arc::new(g)))
                    .map_err(|e| TrainError::Input(format!("config key `kernels`: `cuda`: {e}")))
            }
            #[cfg(feature = "cuda")]
            KernelBackend::CudaHost => {
                Ok(Kernels::Cuda(std::sync::Arc::new(crate::cuda::host::Host)))
            }
            #[cfg(not(feature = "cuda"))]
            KernelBackend::Cuda | KernelBackend::CudaHost => {
                unreachable!("check_against refuses the kernels in a build without `cuda`")
            }
        }
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
        if let (Kernels::Cuda(kernels), Algorithm::P3oV1 | Algorithm::P3oV2 | Algorithm::Dpo) =
            (self, alg)
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
        if let Kernels::Cuda(kernels) = self {
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
        if let Kernels::Cuda(kernels) = self {
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

    /// `log softmax(logits)[target]` for `logits: [.., V]`, `targets: [..]`;
    /// with an outside backend also the [`Detached`] that [`Self::backward`]
    /// needs.
    pub fn token_logprobs(
        &self,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Option<Detached>), TrainError> {
        match self {
            Kernels::Torch => Ok((
                crate::torch::logprobs::token_logprobs(logits, targets),
                None,
            )),
            Kernels::Reference => {
                let (rows, v) = flat_rows(logits);
                let x = host_f64(&logits.detach().reshape([rows, v]))?;
                let t = Vec::<i64>::try_from(&targets.reshape([rows]).to_device(Device::Cpu))
                    .map_err(TorchError::from)?;
                let v = v as usize;
                let logp: Vec<f64> = (0..rows as usize)
                    .map(|r| token_logprob(&x[r * v..(r + 1) * v], t[r] as usize).0)
                    .collect();
                let leaf = Tensor::from_slice(&logp)
                    .to_kind(Kind::Float)
                    .reshape(targets.size())
                    .to_device(logits.device())
                    .set_requires_grad(true);
                Ok((
                    leaf.shallow_clone(),
                    Some(Detached {
                        leaf,
                        logits: logits.shallow_clone(),
                        targets: targets.shallow_clone(),
                        saved: Saved::Reference,
                    }),
                ))
            }
            #[cfg(feature = "cuda")]
            Kernels::Cuda(kernels) => {
                let (rows, v) = flat_rows(logits);
                let flat = logits.detach().reshape([rows, v]).contiguous();
                let t = targets.reshape([rows]).contiguous();
                let (logp, lse) = kernels.token_logprob_fwd_tensor(&flat, &t)?;
                let leaf = logp.reshape(targets.size()).set_requires_grad(true);
                Ok((
                    leaf.shallow_clone(),
                    Some(Detached {
                        leaf,
                        logits: logits.shallow_clone(),
                        targets: t,
                        saved: Saved::Device {
                            kernels: kernels.clone(),
                            lse,
                        },
                    }),
                ))
            }
        }
    }
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
    let grad_logits = match &d.saved {
        #[cfg(feature = "cuda")]
        Saved::Device { kernels, lse } => {
            let (rows, v) = flat_rows(&d.logits);
            let flat = d.logits.detach().reshape([rows, v]).contiguous();
            let g = g.reshape([rows]).to_kind(Kind::Float).contiguous();
            kernels
                .token_logprob_bwd_tensor(&flat, &d.targets, lse, &g)?
                .reshape(d.logits.size())
        }
        Saved::Reference => {
            let (rows, v) = flat_rows(&d.logits);
            let x = host_f64(&d.logits.detach().reshape([rows, v]))?;
            let t = Vec::<i64>::try_from(&d.targets.reshape([rows]).to_device(Device::Cpu))
                .map_err(TorchError::from)?;
            let g = host_f64(&g.reshape([rows]))?;
            let v = v as usize;
            let grad: Vec<f64> = (0..rows as usize)
                .flat_map(|r| token_logprob_grad(&x[r * v..(r + 1) * v], t[r] as usize, g[r]))
                .collect();
            Tensor::from_slice(&grad)
                .reshape(d.logits.size())
                .to_kind(d.logits.kind())
                .to_device(d.logits.device())
        }
    };
    let chained = (&d.logits * grad_logits).sum(Kind::Float);
    (loss + chained).backward();
    Ok(())
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
