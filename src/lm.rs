//! `p3o logprobs`, `p3o generate` and `p3o reward`: the language-model
//! commands (feature `torch`).

use std::io::{self, BufRead};
use std::path::PathBuf;

use crate::Failure;

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
    device: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
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
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// TOML config (every key optional; README lists them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory: metrics.jsonl, checkpoints/, final/.
    #[arg(long)]
    out: PathBuf,
    /// Override a config key, e.g. --set algorithm=p3o-v1 --set lr=1e-3.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Add delta(prompt) to every reward: const:C or random:A[:SEED].
    #[arg(long)]
    reward_shift: Option<p3o::reference::shift::RewardShift>,
    /// Continue from the last complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

/// Reads the input lines (file or standard input), numbered from 1, skipping
/// blank ones.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
fn input_lines(path: &Option<PathBuf>) -> Result<Vec<(usize, String)>, Failure> {
    let reader: Box<dyn BufRead> = match path {
        Some(p) => Box::new(io::BufReader::new(
            std::fs::File::open(p).map_err(|e| Failure::Input(format!("{}: {e}", p.display())))?,
        )),
        None => Box::new(io::stdin().lock()),
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Failure::Input(format!("line {}: {e}", i + 1)))?;
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}

/// The answer of every language-model command in a build without `torch`.
#[cfg(not(feature = "torch"))]
pub fn unavailable() -> Result<(), Failure> {
    Err(Failure::Input("this p3o was built without the `torch` feature; build with `--features torch` (README: set-up)".into()))
}

#[cfg(not(feature = "torch"))]
mod imp {
    use super::*;

    pub fn logprobs(_: ModelArgs) -> Result<(), Failure> {
        unavailable()
    }

    pub fn generate(_: GenerateArgs) -> Result<(), Failure> {
        unavailable()
    }

    pub fn reward(_: ModelArgs) -> Result<(), Failure> {
        unavailable()
    }

    pub fn train(_: TrainArgs) -> Result<(), Failure> {
        unavailable()
    }
}

#[cfg(feature = "torch")]
mod imp {
    use super::*;
    use p3o::torch::generate::{GenerateOptions, generate as sample};
    use p3o::torch::jsonl::{LmInput, parse_line};
    use p3o::torch::logprobs::next_token_logprobs;
    use p3o::torch::reward::rewards;
    use p3o::torch::tokenizer::Tokenizer;
    use p3o::torch::{Head, LanguageModel, TorchError};
    use std::io::{BufWriter, Write};
    use tch::{Device, Kind, Tensor};

    fn bad(e: TorchError) -> Failure {
        Failure::Input(e.to_string())
    }

    fn device(s: &str) -> Result<Device, Failure> {
        let d = match s {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Device::Cuda(n),
                None => {
                    return Err(Failure::Input(format!(
                        "--device `{s}`: expected cpu, cuda or cuda:N"
                    )));
                }
            },
        };
        if let Device::Cuda(n) = d
            && n >= tch::Cuda::device_count() as usize
        {
            return Err(Failure::Input(format!(
                "--device {s}: {} CUDA device(s) available",
                tch::Cuda::device_count()
            )));
        }
        Ok(d)
    }

    fn kind(s: &str) -> Result<Kind, Failure> {
        match s {
            "f32" => Ok(Kind::Float),
            "bf16" => Ok(Kind::BFloat16),
            "f16" => Ok(Kind::Half),
            s => Err(Failure::Input(format!(
                "--dtype `{s}`: expected f32, bf16 or f16"
            ))),
        }
    }

    struct Loaded {
        model: LanguageModel,
        tokenizer: Option<Tokenizer>,
    }

    fn load(a: &ModelArgs, head: Head) -> Result<Loaded, Failure> {
        let model = LanguageModel::load(&a.model, head, device(&a.device)?, kind(&a.dtype)?)
            .map_err(bad)?;
        let tokenizer = if a.model.join("tokenizer.json").is_file() {
            Some(Tokenizer::load(&a.model, &model.config).map_err(bad)?)
        } else {
            None
        };
        Ok(Loaded { model, tokenizer })
    }

    fn parse_all(
        l: &Loaded,
        lines: &[(usize, String)],
        need_response: bool,
    ) -> Result<Vec<LmInput>, Failure> {
        let vocab = l.model.config.vocab_size();
        let max = l.model.config.max_positions();
        lines
            .iter()
            .map(|(n, line)| {
                let x = parse_line(line, l.tokenizer.as_ref(), vocab, need_response)
                    .map_err(|e| Failure::Input(format!("line {n}: {e}")))?;
                let len = (x.prompt.len() + x.response.len()) as i64;
                if len > max {
                    return Err(Failure::Input(format!(
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

    fn write_line(out: &mut impl Write, v: serde_json::Value) -> Result<(), Failure> {
        writeln!(out, "{v}").map_err(Failure::Io)
    }

    pub fn logprobs(a: ModelArgs) -> Result<(), Failure> {
        let lines = input_lines(&a.input)?;
        let l = load(&a, Head::Lm)?;
        let inputs = parse_all(&l, &lines, true)?;
        let mut out = BufWriter::new(io::stdout().lock());
        for x in inputs {
            let full: Vec<i64> = x.prompt.iter().chain(&x.response).copied().collect();
            let ids = ids_tensor(&full, l.model.device());
            let lp = tch::no_grad(|| next_token_logprobs(&l.model, &ids, &ids.ones_like()))
                .map_err(bad)?;
            let resp =
                lp.squeeze_dim(0)
                    .narrow(0, x.prompt.len() as i64 - 1, x.response.len() as i64);
            let token: Vec<f64> =
                Vec::<f64>::try_from(&resp.to_kind(Kind::Double).to_device(Device::Cpu))
                    .map_err(|e| bad(e.into()))?;
            let total: f64 = token.iter().sum();
            write_line(
                &mut out,
                serde_json::json!({"token_logprobs": token, "logprob": total}),
            )?;
        }
        out.flush().map_err(Failure::Io)
    }

    pub fn reward(a: ModelArgs) -> Result<(), Failure> {
        let lines = input_lines(&a.input)?;
        let l = load(&a, Head::Score)?;
        let inputs = parse_all(&l, &lines, false)?;
        let mut out = BufWriter::new(io::stdout().lock());
        for x in inputs {
            let full: Vec<i64> = x.prompt.iter().chain(&x.response).copied().collect();
            let ids = ids_tensor(&full, l.model.device());
            let r = tch::no_grad(|| rewards(&l.model, &ids, &ids.ones_like())).map_err(bad)?;
            write_line(
                &mut out,
                serde_json::json!({"reward": r.double_value(&[0])}),
            )?;
        }
        out.flush().map_err(Failure::Io)
    }

    pub fn train(a: TrainArgs) -> Result<(), Failure> {
        use p3o::train::config::TrainConfig;
        use p3o::train::trainer::Trainer;
        let cfg = TrainConfig::load(a.config.as_deref(), &a.set)
            .map_err(|e| Failure::Input(e.to_string()))?;
        if !a.resume && a.out.join("metrics.jsonl").exists() {
            return Err(Failure::Input(format!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                a.out.display()
            )));
        }
        let to_failure = crate::pipeline::failure;
        let mut trainer = Trainer::new(cfg.clone(), &a.out, a.reward_shift).map_err(to_failure)?;
        if a.resume {
            match trainer.resume().map_err(to_failure)? {
                Some(n) => eprintln!("resuming from step {n}"),
                None => eprintln!("no checkpoint in {}; starting afresh", a.out.display()),
            }
        }
        let last = trainer.run().map_err(to_failure)?;
        println!("{last}");
        eprintln!(
            "metrics: {}  final policy: {}",
            a.out.join("metrics.jsonl").display(),
            a.out.join("final").display()
        );
        Ok(())
    }

    pub fn generate(a: GenerateArgs) -> Result<(), Failure> {
        if a.max_new_tokens < 1 {
            return Err(Failure::Input("--max-new-tokens must be at least 1".into()));
        }
        let lines = input_lines(&a.model.input)?;
        let l = load(&a.model, Head::Lm)?;
        let inputs = parse_all(&l, &lines, false)?;
        let max = l.model.config.max_positions();
        for ((n, _), x) in lines.iter().zip(&inputs) {
            if x.prompt.len() as i64 + a.max_new_tokens > max {
                return Err(Failure::Input(format!(
                    "line {n}: {} prompt tokens + {} new exceed the model's {max} positions",
                    x.prompt.len(),
                    a.max_new_tokens
                )));
            }
        }
        let eos = l
            .tokenizer
            .as_ref()
            .and_then(|t| t.eos_token_id)
            .or(l.model.config.eos_token_id);
        let pad = l
            .tokenizer
            .as_ref()
            .and_then(|t| t.pad_token_id)
            .or(eos)
            .unwrap_or(0);
        let opts = GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            eos_token_id: eos,
            pad_token_id: pad,
            use_cache: true,
            logprobs: false,
        };
        let mut out = BufWriter::new(io::stdout().lock());
        for (i, chunk) in inputs.chunks(a.batch_size.max(1)).enumerate() {
            let prompts: Vec<Vec<i64>> = chunk.iter().map(|x| x.prompt.clone()).collect();
            // Batch i samples from the stream seeded with seed + i.
            let o = GenerateOptions {
                seed: opts.seed.wrapping_add(i as u64),
                ..opts.clone()
            };
            let g = sample(&l.model, &prompts, &o).map_err(bad)?;
            for ids in g.response_ids {
                let text = match &l.tokenizer {
                    Some(t) => serde_json::Value::String(t.decode(&ids).map_err(bad)?),
                    None => serde_json::Value::Null,
                };
                write_line(
                    &mut out,
                    serde_json::json!({"response_ids": ids, "response": text}),
                )?;
            }
        }
        out.flush().map_err(Failure::Io)
    }
}

pub use imp::{generate, logprobs, reward, train};
