//! One RL arm of `p3o demo`: an algorithm and the number of responses it
//! samples per prompt ([C-TRAIN-GROUPS]), written `p3o-v2` for pairs and
//! `p3o-v2-g4` for groups of four in configs, reports and run directories.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::train::config::{Algorithm, MAX_GROUP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DemoArm {
    pub algorithm: Algorithm,
    /// G of [C-TRAIN-GROUPS]; 2 is the paper's pairs.
    pub responses_per_prompt: usize,
}

impl DemoArm {
    /// The arm that samples pairs.
    pub const fn pairs(algorithm: Algorithm) -> DemoArm {
        DemoArm {
            algorithm,
            responses_per_prompt: 2,
        }
    }

    /// The arm that samples groups of `g`.
    pub const fn groups(algorithm: Algorithm, g: usize) -> DemoArm {
        DemoArm {
            algorithm,
            responses_per_prompt: g,
        }
    }
}

impl fmt::Display for DemoArm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.responses_per_prompt {
            2 => f.write_str(self.algorithm.name()),
            g => write!(f, "{}-g{g}", self.algorithm.name()),
        }
    }
}

/// Why a string names no arm.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is no arm: an algorithm ({1}), optionally with -gG for G responses per prompt (2..={MAX_GROUP})"
)]
pub struct ArmError(String, String);

impl FromStr for DemoArm {
    type Err = ArmError;

    fn from_str(s: &str) -> Result<DemoArm, ArmError> {
        let bad = || {
            let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            ArmError(s.to_string(), names.join(", "))
        };
        let (name, g) = match s.rsplit_once("-g") {
            Some((name, g)) if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) => {
                let g: usize = g.parse().map_err(|_| bad())?;
                if !(2..=MAX_GROUP).contains(&g) {
                    return Err(bad());
                }
                (name, g)
            }
            _ => (s, 2),
        };
        let algorithm = Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(bad)?;
        Ok(DemoArm::groups(algorithm, g))
    }
}

impl Serialize for DemoArm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DemoArm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DemoArm, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
