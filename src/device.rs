//! Where a command computes: `cpu`, `cuda` (the first GPU) or `cuda:N`, as
//! flags and config keys spell it. Parsing needs no libtorch; with feature
//! `torch`, [`DeviceSpec::resolve`] checks the device against the machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device as named on the command line or in a config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA device by ordinal; `cuda` is `cuda:0`.
    Cuda(usize),
}

/// A device name that is not `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{0}` (expected cpu, cuda or cuda:N)")]
pub struct DeviceParseError(pub String);

impl FromStr for DeviceSpec {
    type Err = DeviceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceParseError(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "torch")]
impl DeviceSpec {
    /// The libtorch device, if this machine has it; the error says how
    /// many CUDA devices libtorch sees.
    pub fn resolve(self) -> Result<tch::Device, String> {
        match self {
            DeviceSpec::Cpu => Ok(tch::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                let count = tch::Cuda::device_count().max(0) as usize;
                if n < count {
                    Ok(tch::Device::Cuda(n))
                } else {
                    Err(format!(
                        "`{self}`: this machine has {count} CUDA device(s) that libtorch can use"
                    ))
                }
            }
        }
    }
}
