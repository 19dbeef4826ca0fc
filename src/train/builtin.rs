//! The built-in task of `p3o train` with no config: a tiny GPT-NeoX with
//! seeded random weights over a character vocabulary, its frozen copy as the
//! reference, short built-in prompts, and a programmatic reward (vowels in the
//! response). Nothing is downloaded.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use tch::{Device, Kind, Tensor};

use crate::torch::config::ModelConfig;
use crate::torch::{Head, LanguageModel, Result, TorchError};

/// Name of the built-in policy (and reference) in configs.
pub const BUILTIN_MODEL: &str = "builtin:tiny-neox";
/// Name of the built-in reward.
pub const BUILTIN_REWARD: &str = "builtin:vowels";
/// A built-in reward that is always NaN, to exercise the non-finite guard
/// (`max_nonfinite`; feature `testing`).
#[cfg(feature = "testing")]
pub const NAN_REWARD: &str = "builtin:nan";
/// The toy task's hidden gold reward ([C-TOY-GOLD]).
pub const TOY_GOLD_REWARD: &str = "builtin:toy-gold";
/// The toy task's prompts ([C-TOY-TASK]): its RL training split, and its
/// eval split as held-out prompts.
pub const TOY_PROMPTS: &str = "builtin:toy";
/// Prompts of the toy task's training and eval sets.
pub const TOY_TRAIN_PROMPTS: usize = 512;
pub const TOY_EVAL_PROMPTS: usize = 128;
/// Name of the built-in prompt set.
pub const BUILTIN_PROMPTS: &str = "builtin";

const EOS: &str = "<|endoftext|>";
const UNK: &str = "<unk>";

/// The characters of the built-in vocabulary after EOS (0) and UNK (1):
/// printable ASCII.
fn alphabet() -> Vec<char> {
    (b' '..=b'~').map(char::from).collect()
}

/// `tokenizer.json` of the built-in character vocabulary (WordLevel model,
/// one token per character, `Fuse` decoder).
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert(EOS.into(), 0.into());
    vocab.insert(UNK.into(), 1.into());
    for (i, c) in alphabet().into_iter().enumerate() {
        vocab.insert(c.to_string(), (i + 2).into());
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, EOS), special(1, UNK)],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
    })
    .to_string()
}

/// The built-in model's `config.json`.
pub fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
        "vocab_size": 2 + alphabet().len(), "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 128,
        "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
        "use_parallel_residual": true, "hidden_act": "gelu", "tie_word_embeddings": false,
        "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float32"
    })
}

/// The built-in policy: weights drawn from N(0, 0.05^2) (layer norms at 1
/// and 0, biases 0) from a ChaCha8 stream seeded with `seed`, in name order.
pub fn tiny_model(seed: u64, device: Device) -> Result<LanguageModel> {
    let config = ModelConfig::from_json(config_json())?;
    let model = LanguageModel::new(config, Head::Lm, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.05).map_err(|e| TorchError::Input(e.to_string()))?;
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        if name.contains("layernorm") || name.contains("layer_norm") || name.ends_with(".bias") {
            continue;
        }
        let values: Vec<f32> = (0..var.numel()).map(|_| normal.sample(&mut rng)).collect();
        let src = Tensor::from_slice(&values)
            .view(var.size().as_slice())
            .to_device(device)
            .to_kind(Kind::Float);
        tch::no_grad(|| var.copy_(&src));
    }
    Ok(model)
}

/// Training prompts of the built-in task.
pub const TRAIN_PROMPTS: [&str; 24] = [
    "the cat",
    "a dog ran",
    "once upon",
    "my friend",
    "in the garden",
    "we saw",
    "it was late",
    "the river",
    "she said",
    "an old man",
    "on the hill",
    "they found",
    "under a tree",
    "he wrote",
    "the moon",
    "at dawn",
    "our house",
    "the little",
    "far away",
    "by the sea",
    "a new day",
    "the king",
    "two birds",
    "in winter",
];

/// Held-out prompts of the built-in task (the eval split).
pub const EVAL_PROMPTS: [&str; 8] = [
    "the sun",
    "a girl sang",
    "over there",
    "his book",
    "the forest",
    "late at night",
    "my mother",
    "a small boat",
];

/// The built-in reward: the number of vowels (`aeiou`) in the response
/// over the longest possible response, a number in `[0, 1]`: it pays for
/// long responses made of vowels, far from what the random reference says.
pub fn vowel_reward(response: &str, max_new_tokens: i64) -> f64 {
    response.chars().filter(|c| "aeiou".contains(*c)).count() as f64 / max_new_tokens.max(1) as f64
}
