//! Rotary position embeddings: the frequencies (with the `linear` and
//! `llama3` scalings), the rope settings in both of HF's config spellings,
//! and the two channel layouts, half-split (GPT-NeoX, Llama and its kin)
//! and interleaved (GPT-J's rotate-every-two).

use tch::{Kind, TchError, Tensor};

use crate::torch::{Result, TorchError};

/// How the rotated channels pair up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryStyle {
    /// Channel `i` pairs with `i + r/2` (HF's `rotate_half`).
    HalfSplit,
    /// Channel `2i` pairs with `2i + 1` (GPT-J's `rotate_every_two`).
    Interleaved,
}

/// A rope scaling of the frequencies (`rope_type` in transformers).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: the frequencies `theta^(-2i / d)` unchanged.
    None,
    /// `linear`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, and a
    /// smooth blend between (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The rope settings of a config: its base, scaling and rotated share.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeParameters {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// `partial_rotary_factor`, where the config has one.
    pub partial_rotary_factor: Option<f64>,
}

/// The rope types p3o implements.
pub const ROPE_TYPES: &str = "default, linear, llama3";

impl RopeParameters {
    /// Reads the rope settings from a raw `config.json`: transformers 5's
    /// `rope_parameters` object, or the older top-level `rope_theta` and
    /// `rope_scaling` (whose type key is `rope_type` or `type`). Without
    /// either, `default_theta`. An unknown rope type is refused by name.
    pub fn from_config(raw: &serde_json::Value, default_theta: f64) -> Result<RopeParameters> {
        let (object, prefix) = match raw.get("rope_parameters").filter(|v| !v.is_null()) {
            Some(v) => (Some(v), "rope_parameters"),
            None => (
                raw.get("rope_scaling").filter(|v| !v.is_null()),
                "rope_scaling",
            ),
        };
        if let Some(v) = object.filter(|v| !v.is_object()) {
            return Err(TorchError::Input(format!(
                "field `{prefix}`: expected an object, got {v}"
            )));
        }
        let number = |field: &str| -> Result<Option<f64>> {
            let found = object
                .and_then(|o| o.get(field).map(|v| (v, format!("{prefix}.{field}"))))
                .or_else(|| raw.get(field).map(|v| (v, field.to_string())));
            match found {
                None | Some((serde_json::Value::Null, _)) => Ok(None),
                Some((v, name)) => v.as_f64().map(Some).ok_or_else(|| {
                    TorchError::Input(format!("field `{name}`: expected a number, got {v}"))
                }),
            }
        };
        let theta = number("rope_theta")?.unwrap_or(default_theta);
        positive("rope_theta", theta)?;
        let kind = match object.and_then(|o| o.get("rope_type").or_else(|| o.get("type"))) {
            None | Some(serde_json::Value::Null) => "default".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(TorchError::Input(format!(
                    "field `{prefix}.rope_type`: expected a string, got {v}"
                )));
            }
        };
        let required = |field: &str| -> Result<f64> {
            let v = number(field)?.ok_or_else(|| {
                TorchError::Input(format!(
                    "field `{prefix}.{field}`: rope type `{kind}` needs it"
                ))
            })?;
            positive(&format!("{prefix}.{field}"), v)?;
            Ok(v)
        };
        let scaling = match kind.as_str() {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: required("factor")?,
            },
            "llama3" => {
                let s = RopeScaling::Llama3 {
                    factor: required("factor")?,
                    low_freq_factor: required("low_freq_factor")?,
                    high_freq_factor: required("high_freq_factor")?,
                    original_max_position_embeddings: required("original_max_position_embeddings")?,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor: low,
                    high_freq_factor: high,
                    ..
                } = s
                    && high <= low
                {
                    return Err(TorchError::Input(format!(
                        "field `{prefix}.high_freq_factor`: {high} must exceed low_freq_factor {low}"
                    )));
                }
                s
            }
            other => {
                return Err(TorchError::Unsupported(format!(
                    "rope_type `{other}` (supported: {ROPE_TYPES})"
                )));
            }
        };
        Ok(RopeParameters {
            theta,
            scaling,
            partial_rotary_factor: number("partial_rotary_factor")?,
        })
    }

    /// HF's float32 `inv_freq` for `dim` rotary dimensions:
    /// `1 / theta^(2i / dim)` for `i < ceil(dim / 2)`, then scaled.
    pub fn frequencies(&self, dim: i64) -> Vec<f32> {
        let base: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / (self.theta as f32).powf(i as f32 / dim as f32))
            .collect();
        match self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

fn positive(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TorchError::Input(format!(
            "field `{field}`: {v} must be finite and positive"
        )))
    }
}

/// The cos and sin tables `[b, 1, t, r]` of one forward pass's positions,
/// shared by every layer.
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
}

/// Rotation of the first `2 * inv_freq.len()` channels of every head.
pub struct Rotary {
    inv_freq: Vec<f32>,
    style: RotaryStyle,
}

impl Rotary {
    pub fn new(inv_freq: Vec<f32>, style: RotaryStyle) -> Rotary {
        Rotary { inv_freq, style }
    }

    /// How many channels of a head are rotated: as many as the tables
    /// have, `2 ceil(r / 2)` for `r` rotary dimensions (HF's way with an
    /// odd `r`).
    pub fn rotated_channels(&self) -> i64 {
        2 * self.inv_freq.len() as i64
    }

    /// The tables of `positions: [b, t]`, computed in float32 and cast to
    /// `kind`.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> Result<RotaryTables> {
        let inv_freq = Tensor::f_from_slice(&self.inv_freq)?.f_to_device(positions.device())?;
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&inv_freq.f_view([1, 1, -1])?)?; // [b, t, r/2]
        let emb = match self.style {
            RotaryStyle::HalfSplit => Tensor::f_cat(&[&freqs, &freqs], -1)?,
            RotaryStyle::Interleaved => {
                Tensor::f_stack(&[&freqs, &freqs], -1)?.f_flatten(-2, -1)?
            }
        }
        .f_unsqueeze(1)?; // [b, 1, t, r]
        Ok(RotaryTables {
            cos: emb.f_cos()?.f_to_kind(kind)?,
            sin: emb.f_sin()?.f_to_kind(kind)?,
        })
    }

    /// `x * cos + rotate(x) * sin` on the first rotated channels of
    /// `x: [b, h, t, d]`; the rest pass through.
    pub fn apply(
        &self,
        x: &Tensor,
        tables: &RotaryTables,
    ) -> std::result::Result<Tensor, TchError> {
        let d = *x.size().last().unwrap_or(&0);
        let r = self.rotated_channels();
        if r == 0 {
            return Ok(x.shallow_clone());
        }
        let x_rot = x.f_narrow(-1, 0, r)?;
        let turned = match self.style {
            RotaryStyle::HalfSplit => {
                let half = x_rot.f_chunk(2, -1)?;
                Tensor::f_cat(&[half[1].f_neg()?, half[0].shallow_clone()], -1)?
            }
            RotaryStyle::Interleaved => {
                let mut pairs = x_rot.size();
                pairs.pop();
                pairs.extend([r / 2, 2]);
                let paired = x_rot.f_view(pairs.as_slice())?;
                let even = paired.f_select(-1, 0)?;
                let odd = paired.f_select(-1, 1)?;
                Tensor::f_stack(&[odd.f_neg()?, even], -1)?.f_flatten(-2, -1)?
            }
        };
        let rotated = x_rot
            .f_mul(&tables.cos)?
            .f_add(&turned.f_mul(&tables.sin)?)?;
        if r == d {
            Ok(rotated)
        } else {
            Tensor::f_cat(&[rotated, x.f_narrow(-1, r, d - r)?], -1)
        }
    }
}
