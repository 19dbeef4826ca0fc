//! What the commands share for their input and output: numbered input
//! lines, output directories that are never overwritten, JSON on standard
//! output.
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use super::error::CliError;

/// The non-blank lines of `path` (standard input when absent), numbered
/// from 1.
pub fn input_lines(path: &Option<PathBuf>) -> Result<Vec<(usize, String)>, CliError> {
    let reader: Box<dyn BufRead> = match path {
        Some(p) => Box::new(io::BufReader::new(
            std::fs::File::open(p).map_err(|e| CliError::Input(format!("{}: {e}", p.display())))?,
        )),
        None => Box::new(io::stdin().lock()),
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| CliError::Input(format!("line {}: {e}", i + 1)))?;
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}

/// Refuses an output directory that already holds a run of `what` (its
/// `marker` file), so that nothing is overwritten.
pub fn fresh_output(out: &Path, marker: &str, what: &str, hint: &str) -> Result<(), CliError> {
    if out.join(marker).exists() {
        return Err(CliError::Input(format!(
            "{} already holds a {what} ({marker}); {hint}",
            out.display()
        )));
    }
    Ok(())
}

/// One JSON value on a line of standard output.
pub fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    use std::io::Write;
    let text = serde_json::to_string(v).map_err(io::Error::from)?;
    writeln!(io::stdout().lock(), "{text}")?;
    Ok(())
}
