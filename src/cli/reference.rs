//! `p3o reference`: loss and gradient cases evaluated by the float64
//! reference ([C-CLI-REFERENCE]).

use std::io::{self, BufRead, BufWriter, Write};

use p3o::case::run_line;

use super::error::CliError;

/// One result line per case; the first bad line stops the run with its line
/// number, after every earlier result is flushed.
pub fn run() -> Result<(), CliError> {
    let stdin = io::stdin().lock();
    let mut out = BufWriter::new(io::stdout().lock());
    for (i, line) in stdin.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                out.flush()?;
                return Err(CliError::Input(format!(
                    "line {}: input is not valid UTF-8",
                    i + 1
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        match run_line(&line) {
            Ok(result) => {
                serde_json::to_writer(&mut out, &result).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Err(e) => {
                out.flush()?;
                return Err(CliError::Input(format!("line {}: {e}", i + 1)));
            }
        }
    }
    out.flush()?;
    Ok(())
}
