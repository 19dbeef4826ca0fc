//! The closed set of model families p3o loads, with their HF names.

/// A supported model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    GptNeox,
    Gpt2,
    GptJ,
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::GptNeox,
        Family::Gpt2,
        Family::GptJ,
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
    ];

    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::GptNeox => "gpt_neox",
            Family::Gpt2 => "gpt2",
            Family::GptJ => "gptj",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The HF class of the causal LM.
    pub fn causal_lm(self) -> &'static str {
        match self {
            Family::GptNeox => "GPTNeoXForCausalLM",
            Family::Gpt2 => "GPT2LMHeadModel",
            Family::GptJ => "GPTJForCausalLM",
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The HF class of the reward model (a one-label `score` head).
    pub fn sequence_classification(self) -> &'static str {
        match self {
            Family::GptNeox => "GPTNeoXForSequenceClassification",
            Family::Gpt2 => "GPT2ForSequenceClassification",
            Family::GptJ => "GPTJForSequenceClassification",
            Family::Llama => "LlamaForSequenceClassification",
            Family::Mistral => "MistralForSequenceClassification",
            Family::Qwen2 => "Qwen2ForSequenceClassification",
            Family::Qwen3 => "Qwen3ForSequenceClassification",
        }
    }

    pub fn from_model_type(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == name)
    }

    /// The family of an HF class name, causal LM or reward model.
    pub fn from_architecture(name: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.causal_lm() == name || f.sequence_classification() == name)
    }

    /// `gpt_neox, gpt2, ...`: for messages.
    pub fn supported() -> String {
        Family::ALL.map(Family::model_type).join(", ")
    }
}
