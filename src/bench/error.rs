//! What can stop `stead bench` before it has figures to report.

use std::path::PathBuf;

/// Why a benchmark run could not be carried out. Request failures during a run are not errors
/// of this kind: they are counted in the figures (see `stats::Failures`).
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// A command-line value is out of range or malformed: the flag and what was wrong.
    InvalidArgument { flag: &'static str, reason: String },
    /// The scenario name is unknown.
    UnknownScenario(String),
    /// A glommio executor could not be started (often the locked-memory limit, `ulimit -l`).
    Executor(String),
    /// The executors did not all become ready in time (connecting took too long).
    StartTimedOut { waited_ms: u64 },
    /// `--spawn`: the server could not be started or did not print its address.
    Spawn(String),
    /// An output file (`--json`, `--hgrm`, `--plot`) could not be written.
    Output { path: PathBuf, reason: String },
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::InvalidArgument { flag, reason } => write!(formatter, "{flag}: {reason}"),
            BenchError::UnknownScenario(name) => write!(
                formatter,
                "unknown scenario {name:?}; available: {}",
                super::scenario::AVAILABLE.join(", ")
            ),
            BenchError::Executor(reason) => write!(formatter, "cannot start executor: {reason}"),
            BenchError::StartTimedOut { waited_ms } => {
                write!(formatter, "executors not ready after {waited_ms} ms")
            }
            BenchError::Spawn(reason) => write!(formatter, "--spawn: {reason}"),
            BenchError::Output { path, reason } => {
                write!(formatter, "cannot write {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for BenchError {}
