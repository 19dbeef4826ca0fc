//! The random streams of a run, each derived from the run's `seed` and a
//! purpose, so that every random choice is reproducible and no two purposes
//! share a stream.

/// What a derived seed is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedPurpose {
    /// `p3o train`: the order of the prompts, one permutation per pass.
    PromptOrder,
    /// `p3o train`: sampling the responses of a step.
    Sampling,
    /// `p3o train`: the order of the minibatches of an epoch.
    Minibatches,
    /// `p3o train`: sampling the responses of an evaluation.
    Evaluation,
    /// `p3o sft`: the held-out split of the examples.
    SftHeldout,
    /// `p3o reward-model train`: the held-out split of the pairs.
    RewardModelHeldout,
    /// `p3o demo`: the two responses per prompt of the preference pairs.
    PreferenceSamples,
    /// `p3o demo`: which response of a pair is labelled chosen.
    PreferenceLabels,
    /// `p3o demo`: the responses of the final evaluation.
    FinalEvaluation,
}

impl SeedPurpose {
    /// The seed of this purpose at (`step`, `epoch`) of a run seeded with
    /// `seed`: splitmix64 of the mix for the trainer's streams, the seed
    /// with a fixed mask for the pipeline's one-off streams (which take no
    /// step or epoch).
    pub fn seed(self, seed: u64, step: u64, epoch: u64) -> u64 {
        let purpose = match self {
            SeedPurpose::PromptOrder => 1,
            SeedPurpose::Sampling => 2,
            SeedPurpose::Minibatches => 3,
            SeedPurpose::Evaluation => 4,
            SeedPurpose::SftHeldout => return seed ^ 0x5f7,
            SeedPurpose::RewardModelHeldout => return seed ^ 0xb7,
            SeedPurpose::PreferenceSamples => return seed ^ 0x9e11,
            SeedPurpose::PreferenceLabels => return seed ^ 0x1abe1,
            SeedPurpose::FinalEvaluation => return seed ^ 0xe7a1,
        };
        splitmix(seed, purpose, step, epoch)
    }

    /// [`Self::seed`] of a one-off stream (step and epoch 0).
    pub fn of(self, seed: u64) -> u64 {
        self.seed(seed, 0, 0)
    }
}

/// splitmix64's finaliser over the run seed, purpose, step and epoch.
fn splitmix(seed: u64, purpose: u64, step: u64, epoch: u64) -> u64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ step.rotate_left(21)
        ^ epoch.rotate_left(42);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
