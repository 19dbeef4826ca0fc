//! LoRA adapters ([C-LORA]): beside a frozen weight `W: [out, in]`, two
//! trained factors `A: [r, in]` and `B: [out, r]` with `y = x W^T + s x A^T
//! B^T`, `s = alpha / r`; `B` starts at zero, so a fresh adapter changes
//! nothing. The factors live in a variable store of their own under the
//! module's HF path (`<module>.lora_A.weight`, `<module>.lora_B.weight`,
//! PEFT's names less its `base_model.model.` prefix), and one switch turns
//! every adapter of a model off at once: the base model, which serves as
//! the reference policy without a second copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::nn::{Init, Path, VarStore};
use tch::{Device, TchError, Tensor};

/// Which modules get adapters, by the last component of their HF path.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraTargets {
    /// PEFT's `all-linear`: every projection of the transformer layers (not
    /// the LM head, not the embeddings).
    AllLinear,
    /// Modules by name (`q_proj`, `query_key_value`, `c_attn`, ...).
    Modules(Vec<String>),
}

impl LoraTargets {
    /// From a list of names, each of which may hold several separated by
    /// commas; `all-linear` alone means every projection.
    pub fn parse(names: &[String]) -> Result<LoraTargets, String> {
        let names: Vec<String> = names
            .iter()
            .flat_map(|n| n.split(','))
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        match names.as_slice() {
            [] => Err("names no module".into()),
            [one] if one == "all-linear" => Ok(LoraTargets::AllLinear),
            many if many.iter().any(|n| n == "all-linear") => {
                Err("`all-linear` stands alone, not beside module names".into())
            }
            _ => Ok(LoraTargets::Modules(names)),
        }
    }

    /// Whether the projection `module` (the last component of its path) is
    /// one of them.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            LoraTargets::AllLinear => true,
            LoraTargets::Modules(names) => names.iter().any(|n| n == module),
        }
    }
}

/// The adapters' shape: rank, `alpha` and targets.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub r: i64,
    pub alpha: f64,
    pub targets: LoraTargets,
}

impl LoraSpec {
    /// `s = alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// How a model's projections are built: plain, or each target with an
/// adapter in `vs`; and the switch all of them read.
pub struct LoraPlan {
    adapters: Option<(LoraSpec, VarStore)>,
    enabled: Arc<AtomicBool>,
}

impl LoraPlan {
    /// No adapters.
    pub fn none() -> LoraPlan {
        LoraPlan {
            adapters: None,
            enabled: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Adapters of `spec` in a variable store of their own on `device`.
    pub fn new(spec: LoraSpec, device: Device) -> LoraPlan {
        LoraPlan {
            adapters: Some((spec, VarStore::new(device))),
            enabled: Arc::new(AtomicBool::new(true)),
        }
    }

    pub fn spec(&self) -> Option<&LoraSpec> {
        self.adapters.as_ref().map(|(s, _)| s)
    }

    /// The adapters' variables (what trains), if any.
    pub fn var_store(&self) -> Option<&VarStore> {
        self.adapters.as_ref().map(|(_, vs)| vs)
    }

    /// Turns every adapter on (the policy) or off (the base model).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Every adapter off until the guard drops (the base model meanwhile).
    pub fn switched_off(&self) -> AdaptersOff {
        let was = self.enabled.swap(false, Ordering::SeqCst);
        AdaptersOff {
            enabled: self.enabled.clone(),
            was,
        }
    }

    /// The adapter of the projection at `p` (`[out, in]`), if the plan
    /// targets it: `A` from PEFT's default initialisation (uniform in
    /// `+-1/sqrt(in)`, the bound of kaiming-uniform with `a = sqrt(5)`),
    /// `B` zero.
    pub fn adapter(&self, p: &Path, in_dim: i64, out_dim: i64) -> Result<Option<Lora>, TchError> {
        let Some((spec, vs)) = &self.adapters else {
            return Ok(None);
        };
        let components: Vec<&str> = p.components().collect();
        if !components.last().is_some_and(|m| spec.targets.matches(m)) {
            return Ok(None);
        }
        let mut root = vs.root();
        for c in &components {
            root = root.sub(c);
        }
        let bound = 1.0 / (in_dim as f64).sqrt();
        Ok(Some(Lora {
            a: (&root / "lora_A").f_var(
                "weight",
                &[spec.r, in_dim],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?,
            b: (&root / "lora_B").f_var("weight", &[out_dim, spec.r], Init::Const(0.0))?,
            scale: spec.scale(),
            enabled: self.enabled.clone(),
        }))
    }
}

/// [`LoraPlan::switched_off`]'s guard: restores the switch when dropped.
pub struct AdaptersOff {
    enabled: Arc<AtomicBool>,
    was: bool,
}

impl Drop for AdaptersOff {
    fn drop(&mut self) {
        self.enabled.store(self.was, Ordering::SeqCst);
    }
}

/// One projection's adapter.
pub struct Lora {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    scale: f64,
    enabled: Arc<AtomicBool>,
}

impl Lora {
    /// `s x A^T B^T` of inputs `[.., in]`, or nothing while adapters are
    /// switched off.
    pub fn delta(&self, x: &Tensor) -> Result<Option<Tensor>, TchError> {
        if !self.enabled.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let a = self.a.f_to_kind(x.kind())?;
        let b = self.b.f_to_kind(x.kind())?;
        Ok(Some(
            x.f_linear::<&Tensor>(&a, None)?
                .f_linear::<&Tensor>(&b, None)?
                .f_mul_scalar(self.scale)?,
        ))
    }

    /// `y` plus the delta of `lora` on the inputs `x`, if there is one and
    /// it is switched on.
    pub fn add_delta(lora: Option<&Lora>, x: &Tensor, y: Tensor) -> Result<Tensor, TchError> {
        match lora.map(|l| l.delta(x)).transpose()?.flatten() {
            Some(d) => y.f_add(&d),
            None => Ok(y),
        }
    }

    /// `W + s B A` of a weight `[out, in]`: the merged weight.
    pub fn merged(&self, weight: &Tensor) -> Result<Tensor, TchError> {
        let ba = self.b.f_matmul(&self.a)?.f_mul_scalar(self.scale)?;
        weight.f_add(&ba.f_to_kind(weight.kind())?)
    }
}
