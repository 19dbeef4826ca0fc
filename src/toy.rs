//! The built-in synthetic task of the toy pipeline ([C-TOY-TASK],
//! [C-TOY-GOLD]): a generator of prompts and of a supervised corpus, and a
//! hidden gold reward. Nothing is downloaded and nothing here needs libtorch.
//!
//! A prompt names four distinct letters of a twelve-letter alphabet, e.g.
//! `"cfad:"`. The supervised responses are short letter strings that mostly
//! (but not only) use the prompt's letters, of length 3 to 12. The gold reward
//! pays for prompt letters, charges for other characters and for immediate
//! repeats, and charges twice per character beyond length 10. Preference
//! data sampled from the SFT policy rarely shows lengths above 12, so a reward
//! model fitted to it learns "longer and on-topic is better" and can only
//! guess what happens past 12: optimising that proxy hard moves the policy
//! where proxy and gold disagree.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The task's alphabet.
pub const LETTERS: &[u8] = b"abcdefghijkl";
/// Letters named by each prompt.
pub const PROMPT_LETTERS: usize = 4;
/// Probability that a supervised response character is a prompt letter.
pub const ON_TOPIC: f64 = 0.75;
/// Shortest and longest supervised response.
pub const SFT_LENGTHS: (usize, usize) = (3, 12);
/// The gold reward's best length.
pub const TARGET_LENGTH: usize = 10;
/// Gold charge per character beyond [`TARGET_LENGTH`].
pub const OVERLONG_COST: f64 = 2.0;

/// The disjoint prompt sets of the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Supervised corpus.
    Sft,
    /// Preference pairs of the reward model.
    Preferences,
    /// RL training prompts.
    Train,
    /// Held-out prompts: eval, frontier and win rates.
    Eval,
}

/// Seed of the task itself: the prompt sets do not depend on a run's seed.
const TASK_SEED: u64 = 0x7033_6f5f_746f_7921;

/// A prompt: four distinct letters in random order, then `:`.
fn random_prompt(rng: &mut ChaCha8Rng) -> String {
    let mut letters = LETTERS.to_vec();
    let mut out = String::with_capacity(PROMPT_LETTERS + 1);
    for _ in 0..PROMPT_LETTERS {
        let i = rng.random_range(0..letters.len());
        out.push(char::from(letters.swap_remove(i)));
    }
    out.push(':');
    out
}

/// `count` prompts of `split`. The splits are disjoint (a prompt's split is a
/// function of the prompt) and each list is a deterministic function of
/// `(split, count)`, a prefix of the longer lists.
pub fn prompts(split: Split, count: usize) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(TASK_SEED);
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    // 12*11*10*9 = 11880 prompts in all, about a quarter per split.
    let mut draws = 0usize;
    while out.len() < count && draws < 1_000_000 {
        draws += 1;
        let p = random_prompt(&mut rng);
        if split_of(&p) == split && seen.insert(p.clone()) {
            out.push(p);
        }
    }
    out
}

/// The split a prompt belongs to: FNV-1a of its text, modulo 4.
fn split_of(prompt: &str) -> Split {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    match h % 4 {
        0 => Split::Sft,
        1 => Split::Preferences,
        2 => Split::Train,
        _ => Split::Eval,
    }
}

/// The prompt's letters (the characters before the first `:`).
fn topic(prompt: &str) -> &str {
    prompt.split(':').next().unwrap_or("")
}

/// One supervised response to `prompt`: a length uniform in [`SFT_LENGTHS`],
/// each character a prompt letter with probability [`ON_TOPIC`] (uniform
/// among them), else a letter not in the prompt (uniform).
pub fn sft_response(prompt: &str, rng: &mut impl Rng) -> String {
    let on: Vec<u8> = topic(prompt).bytes().collect();
    let off: Vec<u8> = LETTERS
        .iter()
        .copied()
        .filter(|c| !on.contains(c))
        .collect();
    let len = rng.random_range(SFT_LENGTHS.0..=SFT_LENGTHS.1);
    (0..len)
        .map(|_| {
            let pick_on = !on.is_empty() && (off.is_empty() || rng.random_bool(ON_TOPIC));
            let pool = if pick_on { &on } else { &off };
            char::from(pool[rng.random_range(0..pool.len())])
        })
        .collect()
}

/// The supervised corpus: `count` (prompt, response) pairs on the SFT
/// prompts, a deterministic function of `(count, seed)`.
pub fn corpus(count: usize, seed: u64) -> Vec<(String, String)> {
    let prompts = prompts(Split::Sft, count.min(2048));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let p = prompts[i % prompts.len()].clone();
            let r = sft_response(&p, &mut rng);
            (p, r)
        })
        .collect()
}

/// The parts of the gold reward of a response ([C-TOY-GOLD]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GoldParts {
    /// Characters that are prompt letters.
    pub hits: usize,
    /// Other characters.
    pub misses: usize,
    /// Positions whose character equals the previous one.
    pub repeats: usize,
    /// Characters beyond [`TARGET_LENGTH`].
    pub overlong: usize,
}

impl GoldParts {
    pub fn of(prompt: &str, response: &str) -> GoldParts {
        let on = topic(prompt);
        let chars: Vec<char> = response.chars().collect();
        let hits = chars.iter().filter(|c| on.contains(**c)).count();
        GoldParts {
            hits,
            misses: chars.len() - hits,
            repeats: chars.windows(2).filter(|w| w[0] == w[1]).count(),
            overlong: chars.len().saturating_sub(TARGET_LENGTH),
        }
    }

    pub fn reward(&self) -> f64 {
        self.hits as f64
            - self.misses as f64
            - self.repeats as f64
            - OVERLONG_COST * self.overlong as f64
    }
}

/// The hidden gold reward of `response` (its text, without the end-of-text
/// token) to `prompt` ([C-TOY-GOLD]).
pub fn gold_reward(prompt: &str, response: &str) -> f64 {
    GoldParts::of(prompt, response).reward()
}
