//! `p3o logprobs`, `p3o generate` and `p3o reward`: a language model or a
//! reward model over JSON Lines of prompts and responses (feature `torch`).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::path::PathBuf;

use clap::ValueEnum;

use p3o::device::DeviceSpec;

/// The compute dtype of `--dtype`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ComputeDtype {
    F32,
    Bf16,
    F16,
}

/// Where a model lives and how to run it.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// HF model directory (config.json, model.safetensors or shards,
    /// tokenizer.json for text input).
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines input (standard input when absent).
    #[arg(long)]
    input: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype.
    #[arg(long, value_enum, default_value_t = ComputeDtype::F32)]
    dtype: ComputeDtype,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Tokens to generate at most per prompt.
    #[arg(long)]
    max_new_tokens: i64,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<i64>,
    /// Keep the smallest set of tokens with this much probability.
    #[arg(long)]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompts per batch (left-padded together).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
}

#[cfg(feature = "torch")]
pub use imp::{generate, logprobs, reward};

#[cfg(feature = "torch")]
mod imp {
    use std::io::{self, BufWriter, Write};

    use p3o::torch::generate::{GenerateOptions, generate as sample};
    use p3o::torch::jsonl::{LmInput, parse_line};
    use p3o::torch::logprobs::next_token_logprobs;
    use p3o::torch::reward::rewards;
    use p3o::torch::tokenizer::Tokenizer;
    use p3o::torch::{Head, LanguageModel};
    use tch::{Device, Kind, Tensor};

    use super::{ComputeDtype, GenerateArgs, ModelArgs};
    use crate::cli::error::CliError;
    use crate::cli::output::input_lines;

    impl ComputeDtype {
        fn kind(self) -> Kind {
            match self {
                ComputeDtype::F32 => Kind::Float,
                ComputeDtype::Bf16 => Kind::BFloat16,
                ComputeDtype::F16 => Kind::Half,
            }
        }
    }

    struct Loaded {
        model: LanguageModel,
        tokenizer: Option<Tokenizer>,
    }

    fn load(a: &ModelArgs, head: Head) -> Result<Loaded, CliError> {
        let device = a
            .device
            .resolve()
            .map_err(|why| CliError::Input(format!("--device {why}")))?;
        let model = LanguageModel::load(&a.model, head, device, a.dtype.kind())?;
        let tokenizer = if a.model.join("tokenizer.json").is_file() {
            Some(Tokenizer::load(&a.model, &model.config)?)
        } else {
            None
        };
        Ok(Loaded { model, tokenizer })
    }

    fn parse_all(
        l: &Loaded,
        lines: &[(usize, String)],
        need_response: bool,
    ) -> Result<Vec<LmInput>, CliError> {
        let vocab = l.model.config.vocab_size();
        let max = l.model.config.max_positions();
        lines
            .iter()
            .map(|(n, line)| {
                let x = parse_line(line, l.tokenizer.as_ref(), vocab, need_response)
                    .map_err(|e| CliError::Input(format!("line {n}: {e}")))?;
                let len = (x.prompt.len() + x.response.len()) as i64;
                if len > max {
                    return Err(CliError::Input(format!(
                        "line {n}: {len} tokens exceed the model's {max} positions"
                    )));
                }
                Ok(x)
            })
            .collect()
    }

    fn ids_tensor(ids: &[i64], device: Device) -> Tensor {
        Tensor::from_slice(ids).unsqueeze(0).to_device(device)
    }

    fn write_line(out: &mut impl Write, v: serde_json::Value) -> Result<(), CliError> {
        Ok(writeln!(out, "{v}")?)
    }

    pub fn logprobs(a: ModelArgs) -> Result<(), CliError> {
        let lines = input_lines(&a.input)?;
        let l = load(&a, Head::Lm)?;
        let inputs = parse_all(&l, &lines, true)?;
        let mut out = BufWriter::new(io::stdout().lock());
        for x in inputs {
            let full: Vec<i64> = x.prompt.iter().chain(&x.response).copied().collect();
            let ids = ids_tensor(&full, l.model.device());
            let lp = tch::no_grad(|| next_token_logprobs(&l.model, &ids, &ids.ones_like()))?;
            let resp =
                lp.squeeze_dim(0)
                    .narrow(0, x.prompt.len() as i64 - 1, x.response.len() as i64);
            let token: Vec<f64> =
                Vec::<f64>::try_from(&resp.to_kind(Kind::Double).to_device(Device::Cpu))
                    .map_err(p3o::torch::TorchError::from)?;
            let total: f64 = token.iter().sum();
            write_line(
                &mut out,
                serde_json::json!({"token_logprobs": token, "logprob": total}),
            )?;
        }
        Ok(out.flush()?)
    }

    pub fn reward(a: ModelArgs) -> Result<(), CliError> {
        let lines = input_lines(&a.input)?;
        let l = load(&a, Head::Score)?;
        let inputs = parse_all(&l, &lines, false)?;
        let mut out = BufWriter::new(io::stdout().lock());
        for x in inputs {
            let full: Vec<i64> = x.prompt.iter().chain(&x.response).copied().collect();
            let ids = ids_tensor(&full, l.model.device());
            let r = tch::no_grad(|| rewards(&l.model, &ids, &ids.ones_like()))?;
            write_line(
                &mut out,
                serde_json::json!({"reward": r.double_value(&[0])}),
            )?;
        }
        Ok(out.flush()?)
    }

    pub fn generate(a: GenerateArgs) -> Result<(), CliError> {
        let flag = |key: &str| format!("--{}", key.replace('_', "-"));
        GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
            use_cache: true,
            logprobs: false,
        }
        .check(flag)?;
        let lines = input_lines(&a.model.input)?;
        let l = load(&a.model, Head::Lm)?;
        let inputs = parse_all(&l, &lines, false)?;
        let max = l.model.config.max_positions();
        for ((n, _), x) in lines.iter().zip(&inputs) {
            if a.max_new_tokens > max - x.prompt.len() as i64 {
                return Err(CliError::Input(format!(
                    "line {n}: {} prompt tokens + {} new exceed the model's {max} positions",
                    x.prompt.len(),
                    a.max_new_tokens
                )));
            }
        }
        let eos = l.tokenizer.as_ref().map_or_else(
            || l.model.config.eos_token_ids.clone(),
            |t| t.eos_token_ids.clone(),
        );
        let pad = l
            .tokenizer
            .as_ref()
            .and_then(|t| t.pad_token_id)
            .or(eos.first().copied())
            .unwrap_or(0);
        let opts = GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            eos_token_ids: eos,
            pad_token_id: pad,
            use_cache: true,
            logprobs: false,
        };
        let mut out = BufWriter::new(io::stdout().lock());
        for (i, chunk) in inputs.chunks(a.batch_size as usize).enumerate() {
            let prompts: Vec<Vec<i64>> = chunk.iter().map(|x| x.prompt.clone()).collect();
            // Batch i samples from the stream seeded with seed + i.
            let o = GenerateOptions {
                seed: opts.seed.wrapping_add(i as u64),
                ..opts.clone()
            };
            let g = sample(&l.model, &prompts, &o)?;
            for ids in g.response_ids {
                let text = match &l.tokenizer {
                    Some(t) => serde_json::Value::String(t.decode(&ids)?),
                    None => serde_json::Value::Null,
                };
                write_line(
                    &mut out,
                    serde_json::json!({"response_ids": ids, "response": text}),
                )?;
            }
        }
        Ok(out.flush()?)
    }
}
