//! Parsing and checking one `p3o reference` case ([C-CLI-REFERENCE],
//! [C-ERRORS]). Every error names the offending field.

use ndarray::{Array1, Array2};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::reference::{Algorithm, Batch, Evaluation, Hyper, Pair, Problem, evaluate};

/// A bad case: the field it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct CaseError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> CaseError {
    CaseError {
        field: field.into(),
        message: message.into(),
    }
}

/// A checked case, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub algorithm: Algorithm,
    pub hyper: Hyper,
    pub problem: Problem,
    pub batch: Batch,
}

/// The result line of a case.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseResult {
    pub loss: f64,
    pub grad: Vec<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_value: Option<Vec<f64>>,
}

const FIELDS: [&str; 10] = [
    "algorithm",
    "logits",
    "logits_old",
    "logits_ref",
    "rewards",
    "beta",
    "epsilon",
    "samples",
    "value",
    "vf_coef",
];

/// Parses one JSON line into a checked [`Case`].
pub fn parse_case(line: &str) -> Result<Case, CaseError> {
    let value: Value = crate::json::from_str_strict(line).map_err(malformed)?;
    let obj = value
        .as_object()
        .ok_or_else(|| err("(case)", "expected a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(
            unknown.as_str(),
            format!("unknown field (known: {})", FIELDS.join(", ")),
        ));
    }

    let algorithm = match required(obj, "algorithm")? {
        Value::String(s) => Algorithm::from_name(s).ok_or_else(|| {
            let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            err(
                "algorithm",
                format!(
                    "unknown algorithm `{s}` (expected one of {})",
                    names.join(", ")
                ),
            )
        })?,
        _ => return Err(err("algorithm", "expected a string")),
    };

    let logits = table(required(obj, "logits")?, "logits")?;
    let (x_count, k) = logits.dim();
    let logits_old =
        optional_table(obj, "logits_old", (x_count, k))?.unwrap_or_else(|| logits.clone());
    let logits_ref =
        optional_table(obj, "logits_ref", (x_count, k))?.unwrap_or_else(|| logits_old.clone());
    let rewards = table(required(obj, "rewards")?, "rewards")?;
    check_shape("rewards", rewards.dim(), (x_count, k))?;
    for (field, t) in [
        ("logits", &logits),
        ("logits_old", &logits_old),
        ("logits_ref", &logits_ref),
    ] {
        check_spread(field, t)?;
    }

    let hyper = Hyper {
        beta: optional_number(obj, "beta")?.unwrap_or(0.0),
        epsilon: epsilon(obj)?,
        vf_coef: optional_number(obj, "vf_coef")?.unwrap_or(1.0),
    };

    let value = match (obj.get("value"), algorithm.uses_value()) {
        (Some(v), true) => Some(vector(v, "value", x_count)?),
        (None, true) => {
            return Err(err(
                "value",
                format!("required for `{algorithm}`: one number per context"),
            ));
        }
        (Some(_), false) => {
            return Err(err(
                "value",
                format!("only `ppo` takes a value table, not `{algorithm}`"),
            ));
        }
        (None, false) => None,
    };

    let batch = match obj.get("samples") {
        None if exact_work(x_count, k) > MAX_EXACT_PAIRS => {
            return Err(err(
                "samples",
                format!(
                    "the exact expectation over X K^2 = {} (context, y1, y2) cells is above the limit of {MAX_EXACT_PAIRS}: give `samples` instead",
                    exact_work(x_count, k)
                ),
            ));
        }
        None => Batch::Exact,
        Some(v) => Batch::Sampled(samples(v, x_count, k)?),
    };

    Ok(Case {
        algorithm,
        hyper,
        problem: Problem {
            logits,
            logits_old,
            logits_ref,
            rewards,
            value,
        },
        batch,
    })
}

impl Case {
    /// Evaluates the case; a non-finite result (an overflowing ratio) is an
    /// error rather than a `null` in the output.
    pub fn run(&self) -> Result<CaseResult, CaseError> {
        let Evaluation {
            loss,
            grad,
            grad_value,
        } = evaluate(self.algorithm, &self.hyper, &self.problem, &self.batch);
        let finite = loss.is_finite()
            && grad.iter().all(|v| v.is_finite())
            && grad_value.iter().flatten().all(|v| v.is_finite());
        if !finite {
            return Err(err(
                "(result)",
                "the loss or gradient is not finite (an importance ratio overflowed: logits and logits_old are too far apart)",
            ));
        }
        Ok(CaseResult {
            loss,
            grad: grad.rows().into_iter().map(|r| r.to_vec()).collect(),
            grad_value: grad_value.map(|g| g.to_vec()),
        })
    }
}

/// Parses, checks and evaluates one line.
pub fn run_line(line: &str) -> Result<CaseResult, CaseError> {
    parse_case(line)?.run()
}

/// serde_json's message without its "at line 1 column N" suffix, which would
/// be confused with the input line number.
fn malformed(e: serde_json::Error) -> CaseError {
    let (message, column) = crate::json::message_and_column(&e);
    err(
        "(json)",
        format!("malformed JSON at column {column}: {message}"),
    )
}

fn required<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a Value, CaseError> {
    obj.get(field)
        .ok_or_else(|| err(field, "required field is missing"))
}

fn number(v: &Value, field: &str) -> Result<f64, CaseError> {
    let n = v
        .as_f64()
        .ok_or_else(|| err(field, format!("expected a number, got {}", kind(v))))?;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(err(field, "number is not finite"))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn optional_number(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, CaseError> {
    obj.get(field).map(|v| number(v, field)).transpose()
}

fn epsilon(obj: &Map<String, Value>) -> Result<f64, CaseError> {
    let eps = match obj.get("epsilon") {
        None => return Ok(0.2),
        Some(Value::String(s)) if s == "inf" => return Ok(f64::INFINITY),
        Some(Value::String(s)) => {
            return Err(err(
                "epsilon",
                format!("expected a number or \"inf\", got \"{s}\""),
            ));
        }
        Some(v) => number(v, "epsilon")?,
    };
    if eps > 0.0 {
        Ok(eps)
    } else {
        Err(err("epsilon", format!("must be positive, got {eps}")))
    }
}

fn vector(v: &Value, field: &str, len: usize) -> Result<Array1<f64>, CaseError> {
    let items = v.as_array().ok_or_else(|| {
        err(
            field,
            format!("expected an array of {len} numbers, got {}", kind(v)),
        )
    })?;
    if items.len() != len {
        return Err(err(
            field,
            format!(
                "expected one number per context ({len}), got {}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| number(v, &format!("{field}[{i}]")))
        .collect()
}

/// An `[X][K]` table with `X >= 1`, `K >= 2` and equal row lengths.
fn table(v: &Value, field: &str) -> Result<Array2<f64>, CaseError> {
    let rows = v
        .as_array()
        .ok_or_else(|| err(field, format!("expected an array of rows, got {}", kind(v))))?;
    if rows.is_empty() {
        return Err(err(field, "needs at least one context (row)"));
    }
    let mut k = None;
    let mut cells = Vec::new();
    for (x, row) in rows.iter().enumerate() {
        let name = format!("{field}[{x}]");
        let row = row.as_array().ok_or_else(|| {
            err(
                &name,
                format!("expected an array of numbers, got {}", kind(row)),
            )
        })?;
        match k {
            None if row.len() < 2 => {
                return Err(err(
                    &name,
                    format!("needs K >= 2 actions, got {}", row.len()),
                ));
            }
            None => k = Some(row.len()),
            Some(k) if row.len() != k => {
                return Err(err(
                    &name,
                    format!(
                        "ragged table: {} numbers, but {field}[0] has {k}",
                        row.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        for (y, cell) in row.iter().enumerate() {
            cells.push(number(cell, &format!("{name}[{y}]"))?);
        }
    }
    let k = k.expect("at least one row was read");
    Ok(Array2::from_shape_vec((rows.len(), k), cells).expect("cells match the checked shape"))
}

/// The most `(x, y1, y2)` cells the exact expectation visits
/// ([C-CLI-REFERENCE]): about a second of work. Larger cases give `samples`.
pub const MAX_EXACT_PAIRS: u128 = 1 << 26;

fn exact_work(x_count: usize, k: usize) -> u128 {
    x_count as u128 * k as u128 * k as u128
}

/// Refuses a logits row whose spread `max - min` overflows float64
/// ([C-SOFTMAX]): its log-probabilities would not be representable.
fn check_spread(field: &str, t: &Array2<f64>) -> Result<(), CaseError> {
    for (x, row) in t.rows().into_iter().enumerate() {
        let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let min = row.fold(f64::INFINITY, |m, &v| m.min(v));
        if !(max - min).is_finite() {
            return Err(err(
                format!("{field}[{x}]"),
                format!("the row spans {min:e} to {max:e}, a spread that overflows float64"),
            ));
        }
    }
    Ok(())
}

fn check_shape(field: &str, got: (usize, usize), want: (usize, usize)) -> Result<(), CaseError> {
    if got == want {
        Ok(())
    } else {
        Err(err(
            field,
            format!(
                "shape [{}][{}] does not match logits [{}][{}]",
                got.0, got.1, want.0, want.1
            ),
        ))
    }
}

fn optional_table(
    obj: &Map<String, Value>,
    field: &str,
    want: (usize, usize),
) -> Result<Option<Array2<f64>>, CaseError> {
    let Some(v) = obj.get(field) else {
        return Ok(None);
    };
    let t = table(v, field)?;
    check_shape(field, t.dim(), want)?;
    Ok(Some(t))
}

fn samples(v: &Value, x_count: usize, k: usize) -> Result<Vec<Pair>, CaseError> {
    let items = v.as_array().ok_or_else(|| {
        err(
            "samples",
            format!(
                "expected an array of {{\"x\",\"y1\",\"y2\"}}, got {}",
                kind(v)
            ),
        )
    })?;
    if items.is_empty() {
        return Err(err(
            "samples",
            "empty: give at least one pair, or omit the field for the exact expectation",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let name = format!("samples[{n}]");
            let obj = item
                .as_object()
                .ok_or_else(|| err(&name, format!("expected an object, got {}", kind(item))))?;
            if let Some(unknown) = obj
                .keys()
                .find(|key| !["x", "y1", "y2"].contains(&key.as_str()))
            {
                return Err(err(
                    format!("{name}.{unknown}"),
                    "unknown field (known: x, y1, y2)",
                ));
            }
            let index = |key: &str, bound: usize| -> Result<usize, CaseError> {
                let field = format!("{name}.{key}");
                let v = obj
                    .get(key)
                    .ok_or_else(|| err(&field, "required field is missing"))?;
                let i = v.as_u64().ok_or_else(|| {
                    err(&field, format!("expected a non-negative integer, got {v}"))
                })?;
                if (i as u128) < bound as u128 {
                    Ok(i as usize)
                } else {
                    Err(err(&field, format!("index {i} out of range 0..{bound}")))
                }
            };
            Ok(Pair {
                x: index("x", x_count)?,
                y1: index("y1", k)?,
                y2: index("y2", k)?,
            })
        })
        .collect()
}
