//! The binary's error: every failure of a command as one line on standard
//! error and an exit status ([C-ERRORS]): 2 for bad input (flags, configs,
//! files, shapes, a feature this build lacks), 1 for a failure at run time
//! (out of memory, CUDA errors, a run stopped on non-finite numbers, an
//! output that cannot be written).

use std::io;
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The input is at fault: exit status 2.
    #[error("{0}")]
    Input(String),
    /// The command could not finish: exit status 1.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    #[error("{0}")]
    Failure(String),
    /// A command of a feature this build lacks (exit status 2).
    #[cfg_attr(feature = "torch", allow(dead_code))]
    #[error(
        "this p3o was built without the `{0}` feature; build with `--features {0}` (README: set-up)"
    )]
    Unbuilt(&'static str),
    /// Writing the output failed (exit status 1; a closed pipe is a normal
    /// end).
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl CliError {
    /// Prints the error (its first line) and gives the exit status.
    pub fn report(&self) -> ExitCode {
        let code = match self {
            CliError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            CliError::Input(_) | CliError::Unbuilt(_) => 2,
            CliError::Failure(_) | CliError::Io(_) => 1,
        };
        let text = self.to_string();
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        eprintln!("error: {line}");
        ExitCode::from(code)
    }
}

#[cfg(feature = "torch")]
impl From<p3o::train::error::TrainError> for CliError {
    fn from(e: p3o::train::error::TrainError) -> Self {
        if e.is_bad_input() {
            CliError::Input(e.to_string())
        } else {
            CliError::Failure(e.to_string())
        }
    }
}

#[cfg(feature = "torch")]
impl From<p3o::train::error::ConfigError> for CliError {
    fn from(e: p3o::train::error::ConfigError) -> Self {
        CliError::Input(e.to_string())
    }
}

#[cfg(feature = "torch")]
impl From<p3o::torch::TorchError> for CliError {
    fn from(e: p3o::torch::TorchError) -> Self {
        if e.is_bad_input() {
            CliError::Input(e.to_string())
        } else {
            CliError::Failure(e.to_string())
        }
    }
}
