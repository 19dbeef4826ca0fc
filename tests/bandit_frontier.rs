//! Frontier comparisons on the bandit ([C-BANDIT-FRONTIER]): envelopes and
//! advantages of hand-made frontiers with known areas, antisymmetry, and a
//! small seeded comparison of every ordered pair of arms, twice the same.

use p3o::bandit::{BanditConfig, TRAINED};
use p3o::bandit_frontier::{Frontier, advantage, compare, frontiers};

fn frontier(points: &[(f64, f64)]) -> Frontier {
    Frontier {
        label: "x".into(),
        points: points.to_vec(),
    }
}

/// The envelope keeps the rises only; `A` reaching 1 at KL 0.5 against `B`
/// reaching 0.5 at KL 1 has advantage `(0.5 - 0) / 1` on `[0, 1]`, and the
/// reverse is its negative; a frontier that never leaves KL 0 has none.
// spec: C-BANDIT-FRONTIER C-STATS
#[test]
fn advantage_of_hand_made_frontiers() {
    let a = frontier(&[(0.0, 0.0), (1.0, 0.8), (0.5, 1.0), (0.2, -1.0)]);
    assert_eq!(a.envelope(), vec![(0.0, 0.0), (0.5, 1.0)]);
    let b = frontier(&[(0.0, 0.0), (1.0, 0.5), (2.0, 3.0)]);
    // K = min(1, 2) = 1: A holds 0 to 0.5 then 1 to 1 (area 0.5); B holds 0
    // to 1 (area 0).
    assert_eq!(advantage(&a, &b), Some(0.5));
    assert_eq!(advantage(&b, &a), Some(-0.5));
    assert_eq!(advantage(&a, &a), Some(0.0));
    assert_eq!(advantage(&a, &frontier(&[(0.0, 2.0)])), None);
}

/// Three bandits, two coefficients: every ordered pair of the eight arms,
/// counts within the bandits, p-values in (0, 1], mirrored pairs opposite,
/// and the same report from the same seed.
// spec: C-BANDIT-FRONTIER C-STATS
#[test]
fn every_pair_of_arms_is_compared() {
    let cfg = BanditConfig {
        steps: 8,
        ..BanditConfig::default()
    };
    let fr = frontiers(&cfg, 3, &[0.1, 1.0]);
    assert_eq!(fr.len(), 3);
    assert!(fr.iter().all(|b| b.len() == TRAINED.len()));
    // One start point and 8 iterations per coefficient.
    assert!(fr.iter().flatten().all(|f| f.points.len() == 1 + 2 * 8));
    let rows = compare(&fr, 0);
    assert_eq!(rows.len(), TRAINED.len() * (TRAINED.len() - 1));
    for r in &rows {
        assert!(r.above as usize <= r.bandits && r.bandits <= 3, "{r:?}");
        assert!(r.sign.p_value > 0.0 && r.sign.p_value <= 1.0);
        let mirror = rows.iter().find(|m| m.a == r.b && m.b == r.a).unwrap();
        assert!((r.mean_advantage + mirror.mean_advantage).abs() < 1e-12);
        assert_eq!(r.sign.positive, mirror.sign.negative);
    }
    assert_eq!(compare(&frontiers(&cfg, 3, &[0.1, 1.0]), 0), rows);
}
