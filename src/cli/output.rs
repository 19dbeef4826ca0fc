//! What the commands share for their input and output: numbered input
//! lines, output directories that are never overwritten, JSON on standard
//! output.
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use p3o::run_dir;

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

/// The output directory this process claimed for a new run, and whether
/// it existed (empty) before.
static CLAIMED: Mutex<Option<(PathBuf, bool)>> = Mutex::new(None);

/// Claims `out` for a new run: it must be absent or empty
/// ([`p3o::run_dir`]); otherwise the error names what it holds and `hint`
/// says what to do. A claimed directory that a failed command leaves
/// holding nothing of value is removed again ([`release_half_made`]).
pub fn claim_new_run(out: &Path, hint: &str) -> Result<(), CliError> {
    let contents = run_dir::require_fresh(out, hint).map_err(CliError::Input)?;
    let existed = contents == run_dir::Contents::Empty;
    *CLAIMED.lock().unwrap_or_else(|p| p.into_inner()) = Some((out.to_path_buf(), existed));
    Ok(())
}

/// After a failed command or a panic: empties (or, if this process made
/// it, removes) the claimed directory when it holds nothing of value
/// (no checkpoint, no `final/`, no report, no metrics line), so that the
/// same `--out` takes the next attempt. A directory with any of those is
/// left as it is.
pub fn release_half_made() {
    let Some((dir, existed)) = CLAIMED.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    run_dir::clear_if_nothing_of_value(&dir, existed);
}

/// The claim is kept: the command finished.
pub fn keep_claimed() {
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// One JSON value on a line of standard output.
pub fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    use std::io::Write;
    let text = serde_json::to_string(v).map_err(io::Error::from)?;
    writeln!(io::stdout().lock(), "{text}")?;
    Ok(())
}
