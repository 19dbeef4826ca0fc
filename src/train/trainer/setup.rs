//! Setting a run up: the device and kernels, the policy, its reference and
//! the rewards, the tokenizer, the prompts, PPO's value head and the
//! optimizer. Everything the config names is checked here, before any
//! training.

use std::path::Path;

use tch::Kind;

use super::{Reference, Trainer};
use crate::reference::shift::RewardShift;
use crate::torch::chat::{ChatTemplate, TemplateChoice};
use crate::torch::nn::Linear;
use crate::torch::peft::read_adapter_config;
use crate::torch::{Head, TorchError};
use crate::toy::{self, Split};
use crate::train::builtin::{self, BUILTIN_PROMPTS, TOY_PROMPTS};
use crate::train::collective::SingleProcess;
use crate::train::config::{Algorithm, Dtype, TrainConfig};
use crate::train::data::load_prompts;
use crate::train::error::TrainError;
use crate::train::kernels::Kernels;
use crate::train::models::{
    ModelSource, TokenizerFiles, check_shared_vocabulary, device_of, load_model,
    load_policy_with_lora, tokenizer_of,
};
use crate::train::optim::AdamW;
use crate::train::scoring::{Reward, ValueHead};

impl Trainer {
    /// Loads models, tokenizer, prompts and rewards; fails before any
    /// training on bad input.
    pub fn new(
        cfg: TrainConfig,
        out: &Path,
        shift: Option<RewardShift>,
    ) -> Result<Trainer, TrainError> {
        cfg.check()?;
        let device = device_of(cfg.device, "config key `device`")?;
        let mut kernels = Kernels::new(cfg.kernels, device)?.with_head_chunk(cfg.head_chunk_rows);
        if !cfg.fused_head {
            kernels = kernels.materialised();
        }
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        let mut policy = load_policy_with_lora(&cfg.policy, cfg.seed, device, cfg.lora())?;
        let lora = policy.lora.spec().is_some();
        let reference_model = if lora && cfg.reference.is_empty() {
            None
        } else {
            let spec = if cfg.reference.is_empty() {
                &cfg.policy
            } else {
                &cfg.reference
            };
            let m = load_model(spec, Head::Lm, cfg.seed, device)?;
            for (_, mut t) in m.vs.variables() {
                let _ = t.requires_grad_(false);
            }
            Some(m)
        };
        if lora {
            // Only the adapters train ([C-LORA]).
            for (_, mut t) in policy.vs.variables() {
                let _ = t.requires_grad_(false);
            }
        }
        let lora_base = match ModelSource::parse(&cfg.policy) {
            ModelSource::Adapter(dir) => read_adapter_config(&dir)
                .ok()
                .and_then(|(_, base)| base)
                .map_or(cfg.policy.clone(), |b| b.display().to_string()),
            _ => cfg.policy.clone(),
        };
        let tokenizer = tokenizer_of(&cfg.policy, &policy.config)?;
        if let (false, Some(reference)) = (cfg.reference.is_empty(), &reference_model) {
            let owner = format!("the policy `{}`", cfg.policy);
            check_shared_vocabulary(
                "config key `reference`",
                &cfg.reference,
                reference,
                &owner,
                &policy,
                &tokenizer,
            )?;
        }
        let reward = Reward::load(&cfg.reward, "reward", cfg.max_new_tokens, device)?;
        let gold = if cfg.gold_reward.is_empty() {
            None
        } else {
            Some(Reward::load(
                &cfg.gold_reward,
                "gold_reward",
                cfg.max_new_tokens,
                device,
            )?)
        };
        for (key, spec, r) in [
            ("reward", &cfg.reward, Some(&reward)),
            ("gold_reward", &cfg.gold_reward, gold.as_ref()),
        ] {
            if let Some(Reward::Model(m)) = r {
                let owner = format!("the policy `{}`", cfg.policy);
                check_shared_vocabulary(
                    &format!("config key `{key}`"),
                    spec,
                    m,
                    &owner,
                    &policy,
                    &tokenizer,
                )?;
            }
        }
        let tokenizer_files = TokenizerFiles::of(&cfg.policy)?;
        let chat = ChatTemplate::choose(
            &TemplateChoice::parse(&cfg.chat_template),
            &tokenizer.tokenizer_config,
        )
        .map_err(|e| TrainError::Input(format!("config key `chat_template`: {e}")))?;
        let (prompts, eval_prompts) = resolve_prompts(&cfg, chat.as_ref())?;
        // The models that read a prompt and its response must all hold the
        // longest of them: the policy, the reference and a reward model.
        let reference_spec = if cfg.reference.is_empty() {
            &cfg.policy
        } else {
            &cfg.reference
        };
        let mut readers = vec![("policy", cfg.policy.as_str(), &policy)];
        if let Some(reference) = &reference_model {
            readers.push(("reference", reference_spec.as_str(), reference));
        }
        for (key, spec, r) in [
            ("reward", &cfg.reward, Some(&reward)),
            ("gold_reward", &cfg.gold_reward, gold.as_ref()),
        ] {
            if let Some(Reward::Model(m)) = r {
                readers.push((key, spec.as_str(), m));
            }
        }
        let (key, spec, model) = readers
            .iter()
            .min_by_key(|(_, _, m)| m.config.max_positions())
            .expect("the policy is a reader");
        let max = model.config.max_positions();
        let fits = |n: i64| n <= max - cfg.max_new_tokens;
        for p in prompts.iter().chain(&eval_prompts) {
            let n = tokenizer.encode(p)?.len() as i64;
            if n == 0 || !fits(n) {
                let why = if n == 0 {
                    "the prompt has no tokens".to_string()
                } else {
                    format!(
                        "{n} prompt tokens + max_new_tokens {} do not fit the {max} positions of `{spec}` (config key `{key}`)",
                        cfg.max_new_tokens
                    )
                };
                return Err(TrainError::Input(format!(
                    "{}: {why}",
                    prompt_place(&cfg, p, chat.as_ref())
                )));
            }
        }
        let value_head = (cfg.algorithm == Algorithm::Ppo)
            .then(|| {
                let vs = tch::nn::VarStore::new(device);
                let linear =
                    Linear::new(vs.root() / "v_head", policy.config.hidden_size(), 1, true)?;
                Ok::<_, tch::TchError>(ValueHead { vs, linear })
            })
            .transpose()
            .map_err(TorchError::from)?;
        // A LoRA run trains its adapters alone, which stay in float32 (the
        // frozen base computes in the dtype, the adapters' factors are cast
        // to it in each product).
        let mut stores = vec![policy.lora.var_store().unwrap_or(&policy.vs)];
        if let Some(v) = &value_head {
            stores.push(&v.vs);
        }
        let mut opt = AdamW::new(&stores, cfg.weight_decay);
        if cfg.dtype == Dtype::Bf16 {
            if lora {
                policy.vs.set_kind(Kind::BFloat16);
            } else {
                // The master copies come from the float32 weights, before the
                // policy is rounded.
                opt.lower_precision(&mut policy.vs, Kind::BFloat16);
            }
        }
        Ok(Trainer {
            cfg,
            out: out.to_path_buf(),
            policy,
            reference: reference_model.map_or(Reference::PolicyBase, Reference::Model),
            lora_base,
            reward,
            gold,
            tokenizer,
            tokenizer_files,
            prompts,
            eval_prompts,
            shift,
            scale: None,
            opt,
            kernels,
            collective: Box::new(SingleProcess),
            value_head,
            score_stats: [0.0; 3],
            step: 0,
            nonfinite_in_row: 0,
            nonfinite_total: 0,
        })
    }
}

/// Where prompt `p` comes from, for a message: the file and line of config
/// key `prompts` or `eval_prompts` that holds it, or the built-in set.
fn prompt_place(cfg: &TrainConfig, p: &str, chat: Option<&ChatTemplate>) -> String {
    for (key, source) in [
        ("prompts", &cfg.prompts),
        ("eval_prompts", &cfg.eval_prompts),
    ] {
        if source.is_empty() || source.starts_with("builtin:") {
            continue;
        }
        let path = Path::new(source);
        let lines = crate::json::read_lines(path).unwrap_or_default();
        let found = lines.iter().find(|(_, line)| {
            crate::json::from_str_strict::<serde_json::Value>(line)
                .ok()
                .and_then(|v| crate::train::data::prompt_of(&v, chat).ok())
                .is_some_and(|q| q == p)
        });
        if let Some((number, _)) = found {
            return format!("config key `{key}`: {} line {number}", path.display());
        }
    }
    let head: String = p.chars().take(40).collect();
    let more = if p.chars().count() > 40 { "..." } else { "" };
    format!("the built-in prompt {head:?}{more}")
}

/// The training and held-out prompts of config keys `prompts` and
/// `eval_prompts`: a built-in set, or JSON Lines (held out: `eval_prompts`,
/// else the last tenth of `prompts`).
fn resolve_prompts(
    cfg: &TrainConfig,
    chat: Option<&ChatTemplate>,
) -> Result<(Vec<String>, Vec<String>), TrainError> {
    let explicit_eval = || -> Result<Option<Vec<String>>, TrainError> {
        if cfg.eval_prompts.is_empty() {
            Ok(None)
        } else {
            Ok(Some(
                load_prompts(Path::new(&cfg.eval_prompts), chat).map_err(TrainError::Input)?,
            ))
        }
    };
    if cfg.prompts == TOY_PROMPTS {
        let eval = match explicit_eval()? {
            Some(e) => e,
            None => toy::prompts(Split::Eval, builtin::TOY_EVAL_PROMPTS),
        };
        return Ok((toy::prompts(Split::Train, builtin::TOY_TRAIN_PROMPTS), eval));
    }
    if cfg.prompts == BUILTIN_PROMPTS {
        let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let eval = match explicit_eval()? {
            Some(e) => e,
            None => strings(&builtin::EVAL_PROMPTS),
        };
        return Ok((strings(&builtin::TRAIN_PROMPTS), eval));
    }
    let all = load_prompts(Path::new(&cfg.prompts), chat).map_err(TrainError::Input)?;
    if let Some(eval) = explicit_eval()? {
        return Ok((all, eval));
    }
    let cut = all.len() - (all.len() / 10).max(1).min(all.len() - 1);
    let (a, b) = all.split_at(cut.max(1));
    Ok((
        a.to_vec(),
        if b.is_empty() { a.to_vec() } else { b.to_vec() },
    ))
}
