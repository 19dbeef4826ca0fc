//! The statistics of comparisons across seeds ([C-STATS]) against textbook
//! cases: exact sign-test p-values, the Wilson interval of 8 in 10, the
//! bootstrap's coverage of a known mean, and areas of shapes with known
//! areas.

use p3o::stats::{
    area_up_to, bootstrap, bootstrap_mean, envelope, envelope_mean, kl_to_reach, sign_test, wilson,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Exact binomial tails: 9 of 10 positive gives `2 (1 + 10) / 2^10`, 0 of
/// 6 gives `2 / 2^6`, 5 of 10 gives 1; zeros are dropped.
// spec: C-STATS
#[test]
fn sign_test_matches_binomial_tails() {
    let mut d = vec![1.0; 9];
    d.push(-0.5);
    let t = sign_test(&d);
    assert_eq!((t.positive, t.negative, t.ties), (9, 1, 0));
    assert!((t.p_value - 22.0 / 1024.0).abs() < 1e-12, "{}", t.p_value);
    let t = sign_test(&[-1.0; 6]);
    assert!((t.p_value - 2.0 / 64.0).abs() < 1e-12, "{}", t.p_value);
    let mut d = vec![2.0; 5];
    d.extend([-2.0; 5]);
    d.extend([0.0; 3]);
    let t = sign_test(&d);
    assert_eq!((t.positive, t.negative, t.ties), (5, 5, 3));
    assert_eq!(t.p_value, 1.0);
    assert_eq!(sign_test(&[0.0, 0.0]).p_value, 1.0);
    // 7 of 8: 2 (1 + 8) / 256.
    let mut d = vec![0.1; 7];
    d.push(-3.0);
    assert!((sign_test(&d).p_value - 18.0 / 256.0).abs() < 1e-12);
}

/// 8 successes in 10 at 95 %: (0.4902, 0.9433), the textbook value; 0 in 10
/// starts at 0, 10 in 10 ends at 1; bad input gives none.
// spec: C-STATS
#[test]
fn wilson_interval_of_textbook_cases() {
    let i = wilson(8.0, 10.0, 0.95).unwrap();
    assert!(
        (i.lo - 0.490_162).abs() < 1e-5 && (i.hi - 0.943_318).abs() < 1e-5,
        "{i:?}"
    );
    let i = wilson(0.0, 10.0, 0.95).unwrap();
    assert!((0.0..1e-12).contains(&i.lo), "{i:?}");
    assert!((i.hi - 0.277_530).abs() < 1e-5, "{i:?}");
    let i = wilson(10.0, 10.0, 0.95).unwrap();
    assert!(
        i.hi <= 1.0 && i.hi > 1.0 - 1e-12 && (i.lo - 0.722_470).abs() < 1e-5,
        "{i:?}"
    );
    assert!(wilson(11.0, 10.0, 0.95).is_none());
    assert!(wilson(1.0, 0.0, 0.95).is_none());
    assert!(wilson(1.0, 10.0, 1.0).is_none());
}

/// Over 400 samples of 20 normal values, the 95 % bootstrap interval covers
/// the true mean about 93 % of the time (the percentile bootstrap covers a
/// little less than its level at small samples); its width at 200 values is
/// the normal interval's `2 * 1.96 s / sqrt(n)` within 10 %; equal values
/// give a point; the same seed gives the same interval.
// spec: C-STATS
#[test]
fn bootstrap_covers_a_known_mean() {
    let normal = Normal::new(3.0, 2.0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let trials = 400;
    let covered = (0..trials)
        .filter(|&k| {
            let xs: Vec<f64> = (0..20).map(|_| normal.sample(&mut rng)).collect();
            let i = bootstrap_mean(&xs, 0.95, 1000, k).unwrap();
            i.lo <= 3.0 && 3.0 <= i.hi
        })
        .count();
    let rate = covered as f64 / trials as f64;
    // 0.93 +- 4 binomial standard errors (0.013 each).
    assert!((0.88..=0.98).contains(&rate), "coverage {rate}");

    let xs: Vec<f64> = (0..200).map(|_| normal.sample(&mut rng)).collect();
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let i = bootstrap_mean(&xs, 0.95, 4000, 1).unwrap();
    let want = 2.0 * 1.959_964 * sd / n.sqrt();
    assert!(
        ((i.hi - i.lo) / want - 1.0).abs() < 0.1,
        "{} vs {want}",
        i.hi - i.lo
    );
    assert!(i.lo < mean && mean < i.hi);

    let point = bootstrap_mean(&[1.5; 4], 0.95, 100, 3).unwrap();
    assert_eq!((point.lo, point.hi), (1.5, 1.5));
    assert_eq!(
        bootstrap_mean(&xs, 0.9, 500, 9),
        bootstrap_mean(&xs, 0.9, 500, 9)
    );
    assert!(bootstrap_mean(&[], 0.95, 100, 0).is_none());
}

/// A line from (0, 0) to (2, 2) has area 2 up to 2 and 0.5 up to 1; a step
/// up and down gives its trapezoids, in any order of the points; a budget
/// outside the points' range, or a NaN, gives none.
// spec: C-STATS
#[test]
fn area_of_known_shapes() {
    let line = [(0.0, 0.0), (2.0, 2.0)];
    assert_eq!(area_up_to(&line, 2.0), Some(2.0));
    assert_eq!(area_up_to(&line, 1.0), Some(0.5));
    let tent = [(3.0, 0.0), (1.0, 0.0), (2.0, 4.0)];
    assert_eq!(area_up_to(&tent, 3.0), Some(4.0));
    assert_eq!(area_up_to(&tent, 1.5), Some(0.5));
    assert_eq!(area_up_to(&tent, 1.0), Some(0.0));
    assert_eq!(area_up_to(&tent, 3.5), None);
    assert_eq!(area_up_to(&tent, 0.5), None);
    assert_eq!(area_up_to(&[(0.0, f64::NAN), (1.0, 1.0)], 1.0), None);
    assert_eq!(area_up_to(&[], 0.0), None);
}

/// The envelope keeps the rises only; its mean up to K is the area of the
/// step curve over K (the first level held back to 0), computed by hand;
/// the KL to reach a reward is where the envelope first gets there.
// spec: C-STATS
#[test]
fn envelope_steps_by_hand() {
    // Rises at 0 (1.0), 1 (3.0) and 3 (4.0); (2, 2.0) and (4, 3.5) lie below.
    let pts = [(2.0, 2.0), (0.1, 1.0), (1.0, 3.0), (4.0, 3.5), (3.0, 4.0)];
    assert_eq!(envelope(&pts), vec![(0.1, 1.0), (1.0, 3.0), (3.0, 4.0)]);
    // [0, 1): 1, [1, 3): 3, [3, 4): 4 -> (1 + 6 + 4) / 4.
    assert_eq!(envelope_mean(&pts, 4.0), Some(11.0 / 4.0));
    // [0, 1): 1, [1, 2): 3 -> 4 / 2.
    assert_eq!(envelope_mean(&pts, 2.0), Some(2.0));
    // Past the last point the last level holds.
    assert_eq!(envelope_mean(&pts, 6.0), Some((1.0 + 6.0 + 12.0) / 6.0));
    assert_eq!(envelope_mean(&pts, 0.5), Some(1.0));
    assert_eq!(envelope_mean(&pts, 0.0), None);
    assert_eq!(envelope_mean(&[], 1.0), None);
    assert_eq!(kl_to_reach(&pts, 2.5), Some(1.0));
    assert_eq!(kl_to_reach(&pts, 4.0), Some(3.0));
    assert_eq!(kl_to_reach(&pts, 4.5), None);
    // A NaN point is left out, not a level.
    assert_eq!(envelope(&[(0.0, 1.0), (1.0, f64::NAN)]), vec![(0.0, 1.0)]);
}

/// The general bootstrap of a mean is the mean's bootstrap, draw for draw;
/// a ratio of means of equal pairs has the point interval.
// spec: C-STATS
#[test]
fn general_bootstrap_agrees_with_the_mean() {
    let v = [1.0, 4.0, 2.0, 8.0, 5.0];
    let by_mean = bootstrap_mean(&v, 0.95, 500, 3).unwrap();
    let general = bootstrap(v.len(), 0.95, 500, 3, |idx| {
        idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64
    })
    .unwrap();
    assert_eq!(by_mean, general);
    let ratio = bootstrap(v.len(), 0.95, 500, 3, |idx| {
        let s: f64 = idx.iter().map(|&i| v[i]).sum();
        (2.0 * s) / s
    })
    .unwrap();
    assert_eq!((ratio.lo, ratio.hi), (2.0, 2.0));
    assert!(bootstrap(3, 0.95, 100, 0, |_| f64::NAN).is_none());
}
