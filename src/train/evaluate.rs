//! `p3o eval` and `p3o compare`: held-out KL to the reference and mean
//! rewards of policies, and their head-to-head win rates ([C-WINRATE]).

use std::path::Path;

use serde::Serialize;
use tch::{Device, Kind};

use super::builtin::{self, BUILTIN_PROMPTS, TOY_PROMPTS};
use super::data::load_prompts;
use super::error::TrainError;
use super::scoring::{Reward, sequence_logprobs};
use crate::stats::{MeanSe, mean_se, win_rates};
use crate::torch::chat::ChatTemplate;
use crate::torch::generate::{GenerateOptions, generate};
use crate::torch::tokenizer::Tokenizer;
use crate::torch::{Head, LanguageModel};

/// How responses are sampled for evaluation.
#[derive(Clone, Debug)]
pub struct SampleSpec {
    pub max_new_tokens: i64,
    pub temperature: f64,
    /// Responses per prompt.
    pub samples: usize,
    pub seed: u64,
    /// Prompts per generation call.
    pub batch_size: usize,
}

/// Held-out prompts: `builtin:toy` (the toy task's eval split), `builtin`
/// (the vowel task's) or a JSON Lines file.
/// Conversations (`{"messages"}`) are rendered with `chat`.
pub fn eval_prompts(spec: &str, chat: Option<&ChatTemplate>) -> Result<Vec<String>, TrainError> {
    match spec {
        TOY_PROMPTS => Ok(crate::toy::prompts(
            crate::toy::Split::Eval,
            builtin::TOY_EVAL_PROMPTS,
        )),
        BUILTIN_PROMPTS => Ok(builtin::EVAL_PROMPTS
            .iter()
            .map(|s| s.to_string())
            .collect()),
        path => load_prompts(Path::new(path), chat).map_err(TrainError::Input),
    }
}

/// `samples` responses to each prompt (prompt-major: prompt k's responses
/// are rows `k * samples ..`), generation call `c` seeded with `seed + c`,
/// so that every policy sees the same seeds.
pub fn sample_responses(
    model: &LanguageModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[Vec<i64>],
    spec: &SampleSpec,
) -> Result<Vec<Vec<i64>>, TrainError> {
    let rows: Vec<Vec<i64>> = prompt_ids
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), spec.samples))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for (c, chunk) in rows.chunks(spec.batch_size.max(1)).enumerate() {
        let o = GenerateOptions {
            max_new_tokens: spec.max_new_tokens,
            temperature: spec.temperature,
            top_k: None,
            top_p: None,
            seed: spec.seed.wrapping_add(c as u64),
            eos_token_ids: tokenizer.eos_token_ids.clone(),
            pad_token_id: tokenizer.pad_token_id.unwrap_or(0),
            use_cache: true,
            logprobs: false,
        };
        out.extend(generate(model, chunk, &o)?.response_ids);
    }
    Ok(out)
}

/// Everything a policy is measured against.
pub struct Judges {
    pub reference: LanguageModel,
    pub reward: Reward,
    pub gold: Option<Reward>,
    pub tokenizer: Tokenizer,
}

/// One policy's held-out numbers.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyEval {
    pub policy: String,
    /// Sequence-level `log pi(y|x) - log pi_ref(y|x)` over samples from pi.
    pub kl: MeanSe,
    pub reward: MeanSe,
    pub gold_reward: Option<MeanSe>,
    /// Response tokens, the end-of-text token included.
    pub response_length: MeanSe,
    /// Per-prompt mean rewards (for win rates).
    #[serde(skip)]
    pub reward_per_prompt: Vec<f64>,
    #[serde(skip)]
    pub gold_per_prompt: Option<Vec<f64>>,
}

/// Means over prompt `k`'s `s` consecutive samples.
fn per_prompt(values: &[f64], s: usize) -> Vec<f64> {
    values
        .chunks(s.max(1))
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect()
}

/// Samples from `policy` on `prompts` and measures KL, reward and gold
/// reward; standard errors are over prompts (each prompt's samples
/// averaged first).
pub fn evaluate_policy(
    name: &str,
    policy: &LanguageModel,
    judges: &Judges,
    prompts: &[String],
    spec: &SampleSpec,
) -> Result<PolicyEval, TrainError> {
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| judges.tokenizer.encode(p))
        .collect::<Result<_, _>>()?;
    let rows: Vec<Vec<i64>> = ids
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), spec.samples))
        .collect();
    let responses = sample_responses(policy, &judges.tokenizer, &ids, spec)?;
    let mut kl = Vec::with_capacity(rows.len());
    for (p, r) in rows.chunks(256).zip(responses.chunks(256)) {
        let lp = sequence_logprobs(policy, p, r)?;
        let lp_ref = sequence_logprobs(&judges.reference, p, r)?;
        let d = (lp.to_kind(Kind::Double) - lp_ref.to_kind(Kind::Double)).to_device(Device::Cpu);
        kl.extend(Vec::<f64>::try_from(&d).map_err(crate::torch::TorchError::from)?);
    }
    let reward = judges.reward.score(&judges.tokenizer, &rows, &responses)?;
    let gold = match &judges.gold {
        Some(g) => Some(g.score(&judges.tokenizer, &rows, &responses)?),
        None => None,
    };
    let lengths: Vec<f64> = responses.iter().map(|r| r.len() as f64).collect();
    let s = spec.samples;
    let reward_per_prompt = per_prompt(&reward, s);
    let gold_per_prompt = gold.as_ref().map(|g| per_prompt(g, s));
    Ok(PolicyEval {
        policy: name.to_string(),
        kl: mean_se(&per_prompt(&kl, s)),
        reward: mean_se(&reward_per_prompt),
        gold_reward: gold_per_prompt.as_deref().map(mean_se),
        response_length: mean_se(&per_prompt(&lengths, s)),
        reward_per_prompt,
        gold_per_prompt,
    })
}

/// The win-rate matrices of evaluated policies under the reward and (when
/// present) the gold reward: entry (i, j) is i's win rate over j.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub policies: Vec<String>,
    pub reward: Vec<Vec<MeanSe>>,
    pub gold_reward: Option<Vec<Vec<MeanSe>>>,
}

pub fn compare(evals: &[PolicyEval]) -> Comparison {
    let gold: Option<Vec<Vec<f64>>> = evals.iter().map(|e| e.gold_per_prompt.clone()).collect();
    Comparison {
        policies: evals.iter().map(|e| e.policy.clone()).collect(),
        reward: win_rates(
            &evals
                .iter()
                .map(|e| e.reward_per_prompt.clone())
                .collect::<Vec<_>>(),
        ),
        gold_reward: gold.map(|g| win_rates(&g)),
    }
}

/// Loads a policy from an HF directory for evaluation.
pub fn load_policy(dir: &Path, device: Device) -> Result<LanguageModel, TrainError> {
    if !dir.join("config.json").is_file() {
        return Err(TrainError::Input(format!(
            "policy `{}`: not an HF model directory (no config.json)",
            dir.display()
        )));
    }
    Ok(LanguageModel::load(dir, Head::Lm, device, Kind::Float)?)
}
