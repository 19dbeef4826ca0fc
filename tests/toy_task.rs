//! The built-in toy task and the evaluation statistics: no libtorch needed.

mod common;

use std::collections::HashSet;

use p3o::stats::{mean_se, win_rates};
use p3o::toy::{self, GoldParts, Split};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

// spec: C-TOY-TASK
#[test]
fn splits_are_disjoint_deterministic_prefixes() {
    let sets: Vec<Vec<String>> = [Split::Sft, Split::Preferences, Split::Train, Split::Eval]
        .into_iter()
        .map(|s| toy::prompts(s, 400))
        .collect();
    let mut all = HashSet::new();
    for set in &sets {
        assert_eq!(set.len(), 400);
        for p in set {
            assert!(all.insert(p.clone()), "{p} in two splits or twice");
            let (letters, rest) = p.split_once(':').unwrap();
            assert_eq!(rest, "");
            assert_eq!(letters.len(), toy::PROMPT_LETTERS);
            let distinct: HashSet<u8> = letters.bytes().collect();
            assert_eq!(distinct.len(), toy::PROMPT_LETTERS);
            assert!(letters.bytes().all(|c| toy::LETTERS.contains(&c)));
        }
    }
    assert_eq!(toy::prompts(Split::Eval, 50), sets[3][..50].to_vec());
}

// spec: C-TOY-TASK
#[test]
fn supervised_responses_follow_the_stated_distribution() {
    let corpus = toy::corpus(20_000, 7);
    assert_eq!(corpus, toy::corpus(20_000, 7));
    assert_ne!(corpus, toy::corpus(20_000, 8));
    let (mut chars, mut on, mut lengths) = (0usize, 0usize, [0usize; 13]);
    for (p, r) in &corpus {
        let letters = p.split(':').next().unwrap();
        assert!((3..=12).contains(&r.len()), "{r:?}");
        lengths[r.len()] += 1;
        chars += r.len();
        on += r.chars().filter(|c| letters.contains(*c)).count();
        assert!(r.bytes().all(|c| toy::LETTERS.contains(&c)));
    }
    let share = on as f64 / chars as f64;
    // About 150k characters: the standard error of the share is ~0.0013.
    assert!(
        (share - toy::ON_TOPIC).abs() < 0.01,
        "on-topic share {share}"
    );
    for (len, &n) in lengths.iter().enumerate().skip(3) {
        let p = n as f64 / corpus.len() as f64;
        assert!((p - 0.1).abs() < 0.01, "length {len}: share {p}");
    }
}

// spec: C-TOY-GOLD
#[test]
fn gold_reward_by_hand() {
    // hits 4 (c, a, f, d), misses 1 (z), no repeat, not overlong.
    assert_eq!(toy::gold_reward("cfad:", "cafzd"), 3.0);
    // Two immediate repeats.
    assert_eq!(toy::gold_reward("cfad:", "aaac"), 4.0 - 2.0);
    // The optimum: length 10, only prompt letters, no repeat.
    assert_eq!(toy::gold_reward("cfad:", "cafdcafdca"), 10.0);
    // Two characters too long: +12 hits, -2*2.
    assert_eq!(toy::gold_reward("cfad:", "cafdcafdcafd"), 12.0 - 4.0);
    assert_eq!(toy::gold_reward("cfad:", ""), 0.0);
    assert_eq!(
        GoldParts::of("cfad:", "ccxyz"),
        GoldParts {
            hits: 2,
            misses: 3,
            repeats: 1,
            overlong: 0
        }
    );
}

proptest! {
    #![proptest_config(common::config("tests/proptest-regressions/toy_task.txt"))]

    // spec: C-TOY-GOLD
    /// No response beats 10, and appending an on-topic, non-repeating letter
    /// up to length 10 gains exactly 1.
    #[test]
    fn gold_is_at_most_ten_and_rewards_length_up_to_ten(
        seed in any::<u64>(), extra in 0usize..20,
    ) {
        let prompt = &toy::prompts(Split::Eval, 20)[(seed % 20) as usize];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut r = toy::sft_response(prompt, &mut rng);
        r.extend(std::iter::repeat_n('z', extra));
        prop_assert!(toy::gold_reward(prompt, &r) <= 10.0);
        let letters: Vec<char> = prompt.trim_end_matches(':').chars().collect();
        let short: String = r.chars().take(9).collect();
        let next = letters.iter().find(|&&c| !short.ends_with(c)).unwrap();
        let longer = format!("{short}{next}");
        prop_assert_eq!(toy::gold_reward(prompt, &longer), toy::gold_reward(prompt, &short) + 1.0);
    }

    // spec: C-WINRATE
    /// W_ij + W_ji = 1 with equal standard errors, W_ii = 1/2, and a policy
    /// that is better on every prompt wins all of them.
    #[test]
    fn win_rates_are_complementary(
        rewards in prop::collection::vec(prop::collection::vec(-3i32..=3, 12), 1..5),
    ) {
        let r: Vec<Vec<f64>> = rewards.iter().map(|v| v.iter().map(|&x| f64::from(x)).collect()).collect();
        let w = win_rates(&r);
        prop_assert_eq!(w.len(), r.len());
        for (i, row) in w.iter().enumerate() {
            prop_assert_eq!(row[i].mean, 0.5);
            prop_assert_eq!(row[i].se, 0.0);
            for (j, wij) in row.iter().enumerate() {
                prop_assert!((wij.mean + w[j][i].mean - 1.0).abs() < 1e-12);
                prop_assert!((wij.se - w[j][i].se).abs() < 1e-12);
            }
        }
        let better: Vec<f64> = r[0].iter().map(|x| x + 1.0).collect();
        let w2 = win_rates(&[better, r[0].clone()]);
        prop_assert_eq!(w2[0][1].mean, 1.0);
        prop_assert_eq!(w2[0][1].se, 0.0);
    }
}

// spec: C-WINRATE
#[test]
fn mean_and_standard_error_by_hand() {
    let m = mean_se(&[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(m.mean, 2.5);
    // Sample variance 5/3, over n = 4.
    assert!((m.se - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
    assert_eq!(mean_se(&[2.0]).se, 0.0);
    assert!(mean_se(&[]).mean.is_nan());
    // Win, tie, loss: outcomes 1, 0.5, 0.
    let w = win_rates(&[vec![2.0, 1.0, 0.0], vec![1.0, 1.0, 1.0]]);
    assert_eq!(w[0][1].mean, 0.5);
    assert!((w[0][1].se - (0.25f64 / 3.0).sqrt()).abs() < 1e-15);
}
