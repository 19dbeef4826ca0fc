//! Reading a family's `config.json` into its struct, and the checks that
//! every family's sizes share; each error names its field.

use serde::de::DeserializeOwned;

use crate::torch::{Result, TorchError};

/// The largest tensor dimension a config may ask for: 2^31, far above any
/// real model, and small enough that products of two stay within `i64`.
pub const MAX_DIMENSION: i64 = 1 << 31;

/// Deserialises a family's config struct from the raw `config.json`; a
/// field error names the field's JSON path.
pub fn parse<T: DeserializeOwned>(raw: &serde_json::Value, model_type: &str) -> Result<T> {
    serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let message = crate::json::message_and_column(&inner).0;
        if field == "." {
            TorchError::Input(format!("{model_type} config: {message}"))
        } else {
            TorchError::Input(format!("field `{field}`: {message}"))
        }
    })
}

/// Each `(field, value)` is an integer in `1..=MAX_DIMENSION`.
pub fn check_dimensions(fields: &[(&str, i64)]) -> Result<()> {
    for &(field, v) in fields {
        if !(1..=MAX_DIMENSION).contains(&v) {
            return Err(TorchError::Input(format!(
                "field `{field}`: {v} must be in 1..={MAX_DIMENSION}"
            )));
        }
    }
    Ok(())
}

/// The field `label` names (in backticks, with any other spelling) is
/// finite and positive.
pub fn check_positive(label: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TorchError::Input(format!(
            "field {label}: {v} must be finite and positive"
        )))
    }
}

/// `divisor` divides `field` (both already checked positive).
pub fn check_divides(field: &str, v: i64, divisor_field: &str, divisor: i64) -> Result<()> {
    if v % divisor == 0 {
        Ok(())
    } else {
        Err(TorchError::Input(format!(
            "field `{field}`: {v} is not a multiple of `{divisor_field}` ({divisor})"
        )))
    }
}

/// The activation a config names, or an error naming the field and what
/// the family supports.
pub fn activation(
    family: &str,
    field: &str,
    name: &str,
    supported: &[crate::torch::nn::Activation],
) -> Result<crate::torch::nn::Activation> {
    match crate::torch::nn::Activation::from_hf(name) {
        Some(a) if supported.contains(&a) => Ok(a),
        _ => Err(TorchError::Unsupported(format!(
            "{family} {field} `{name}` (supported: {})",
            supported
                .iter()
                .map(|a| a.hf_name())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
