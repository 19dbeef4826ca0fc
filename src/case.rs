//! Parsing and checking one `p3o reference` case ([C-CLI-REFERENCE],
//! [C-ERRORS]). Every error names the offending field.

use ndarray::{Array1, Array2};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::reference::{
    Algorithm, Batch, Evaluation, Group, Hyper, Pair, Problem, ScaleRewards, evaluate,
};

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

const FIELDS: [&str; 15] = [
    "algorithm",
    "logits",
    "logits_old",
    "logits_ref",
    "rewards",
    "beta",
    "epsilon",
    "samples",
    "groups",
    "group_size",
    "value",
    "vf_coef",
    "cliprange_ratio",
    "scale_rewards",
    "std_eps",
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
        cliprange_ratio: cliprange_ratio(obj)?,
        scale_rewards: scale_rewards(obj)?,
        std_eps: std_eps(obj)?,
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

    let batch = batch(obj, x_count, k)?;

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

/// `cliprange_ratio`: a number above 1 or `"inf"`, default 10 ([C-P3O-TRLX]).
fn cliprange_ratio(obj: &Map<String, Value>) -> Result<f64, CaseError> {
    let c = match obj.get("cliprange_ratio") {
        None => return Ok(10.0),
        Some(Value::String(s)) if s == "inf" => return Ok(f64::INFINITY),
        Some(Value::String(s)) => {
            return Err(err(
                "cliprange_ratio",
                format!("expected a number or \"inf\", got \"{s}\""),
            ));
        }
        Some(v) => number(v, "cliprange_ratio")?,
    };
    if c > 1.0 {
        Ok(c)
    } else {
        Err(err("cliprange_ratio", format!("must be above 1, got {c}")))
    }
}

/// `scale_rewards`: `"group"` (the default) or `"none"` ([C-GRPO]).
fn scale_rewards(obj: &Map<String, Value>) -> Result<ScaleRewards, CaseError> {
    let names = || {
        ScaleRewards::ALL
            .iter()
            .map(|s| format!("\"{}\"", s.name()))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    match obj.get("scale_rewards") {
        None => Ok(ScaleRewards::Group),
        Some(Value::String(s)) => ScaleRewards::from_name(s).ok_or_else(|| {
            err(
                "scale_rewards",
                format!("unknown value \"{s}\" (expected {})", names()),
            )
        }),
        Some(v) => Err(err(
            "scale_rewards",
            format!("expected {}, got {}", names(), kind(v)),
        )),
    }
}

/// `std_eps`: a number >= 0, default 0 ([C-GRPO]).
fn std_eps(obj: &Map<String, Value>) -> Result<f64, CaseError> {
    let e = optional_number(obj, "std_eps")?.unwrap_or(0.0);
    if e >= 0.0 {
        Ok(e)
    } else {
        Err(err("std_eps", format!("must be >= 0, got {e}")))
    }
}

/// The estimator: `samples` (pairs), `groups`, or the exact expectation over
/// groups of `group_size` (default 2) ([C-CLI-REFERENCE]).
fn batch(obj: &Map<String, Value>, x_count: usize, k: usize) -> Result<Batch, CaseError> {
    let given: Vec<&str> = ["samples", "groups", "group_size"]
        .into_iter()
        .filter(|f| obj.contains_key(*f))
        .collect();
    if given.len() > 1 {
        return Err(err(
            given[1],
            format!(
                "give one of `samples`, `groups` and `group_size`, not `{}` and `{}`",
                given[0], given[1]
            ),
        ));
    }
    if let Some(v) = obj.get("samples") {
        return Ok(Batch::Sampled(samples(v, x_count, k)?));
    }
    if let Some(v) = obj.get("groups") {
        return Ok(Batch::Groups(groups(v, x_count, k)?));
    }
    let g = match obj.get("group_size") {
        None => 2,
        Some(v) => {
            let g = v
                .as_u64()
                .ok_or_else(|| err("group_size", format!("expected an integer >= 2, got {v}")))?;
            if g < 2 {
                return Err(err("group_size", format!("must be at least 2, got {g}")));
            }
            g
        }
    };
    let work = exact_work(x_count, k, g);
    if work > MAX_EXACT_PAIRS {
        let field = if obj.contains_key("group_size") {
            "group_size"
        } else {
            "samples"
        };
        return Err(err(
            field,
            format!(
                "the exact expectation visits X K^G G(G-1)/2 = {work} (context, group, pair) cells, above the limit of {MAX_EXACT_PAIRS}: give `samples` or `groups` instead"
            ),
        ));
    }
    Ok(if g == 2 {
        Batch::Exact
    } else {
        Batch::ExactGroups(g as usize)
    })
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

/// The most `(context, group, pair)` cells the exact expectation visits
/// ([C-CLI-REFERENCE]): about a second of work. Larger cases give `samples`
/// or `groups`.
pub const MAX_EXACT_PAIRS: u128 = 1 << 26;

/// `X K^G G(G-1)/2`, saturating (`X K^2` for pairs).
fn exact_work(x_count: usize, k: usize, g: u64) -> u128 {
    let pairs = (g as u128).saturating_mul(g as u128 - 1) / 2;
    let groups = u32::try_from(g)
        .ok()
        .and_then(|g| (k as u128).checked_pow(g))
        .unwrap_or(u128::MAX);
    (x_count as u128)
        .saturating_mul(groups)
        .saturating_mul(pairs)
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
            let at = |key: &str, bound: usize| index(obj.get(key), &format!("{name}.{key}"), bound);
            Ok(Pair {
                x: at("x", x_count)?,
                y1: at("y1", k)?,
                y2: at("y2", k)?,
            })
        })
        .collect()
}

fn groups(v: &Value, x_count: usize, k: usize) -> Result<Vec<Group>, CaseError> {
    let items = v.as_array().ok_or_else(|| {
        err(
            "groups",
            format!("expected an array of {{\"x\",\"ys\"}}, got {}", kind(v)),
        )
    })?;
    if items.is_empty() {
        return Err(err(
            "groups",
            "empty: give at least one group, or omit the field for the exact expectation",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let name = format!("groups[{n}]");
            let obj = item
                .as_object()
                .ok_or_else(|| err(&name, format!("expected an object, got {}", kind(item))))?;
            if let Some(unknown) = obj.keys().find(|key| !["x", "ys"].contains(&key.as_str())) {
                return Err(err(
                    format!("{name}.{unknown}"),
                    "unknown field (known: x, ys)",
                ));
            }
            let x = index(obj.get("x"), &format!("{name}.x"), x_count)?;
            let field = format!("{name}.ys");
            let ys = obj
                .get("ys")
                .ok_or_else(|| err(&field, "required field is missing"))?;
            let ys = ys.as_array().ok_or_else(|| {
                err(
                    &field,
                    format!("expected an array of indices, got {}", kind(ys)),
                )
            })?;
            if ys.len() < 2 {
                return Err(err(
                    &field,
                    format!("a group needs at least 2 responses, got {}", ys.len()),
                ));
            }
            let ys = ys
                .iter()
                .enumerate()
                .map(|(i, y)| index(Some(y), &format!("{field}[{i}]"), k))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Group { x, ys })
        })
        .collect()
}

/// A required index in `0..bound`.
fn index(v: Option<&Value>, field: &str, bound: usize) -> Result<usize, CaseError> {
    let v = v.ok_or_else(|| err(field, "required field is missing"))?;
    let i = v
        .as_u64()
        .ok_or_else(|| err(field, format!("expected a non-negative integer, got {v}")))?;
    if (i as u128) < bound as u128 {
        Ok(i as usize)
    } else {
        Err(err(field, format!("index {i} out of range 0..{bound}")))
    }
}
