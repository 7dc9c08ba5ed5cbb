//! Exit codes as a type, and how errors map to them.

use pgcairn_engine::Error as EngineError;

/// The process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Success = 0,
    /// The operation failed; for archive-get: the file is not in the archive; for drill:
    /// the drill could not run (an operational error such as a full or unwritable disk or
    /// TMPDIR, or storage unreachable), which says nothing about the backup.
    Failed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// drill: an integrity check failed, or the backup could not be restored.
    DrillIntegrity = 3,
    /// drill: the MTTR objective (`--max-mttr`) was missed.
    DrillObjective = 4,
    /// archive-get cannot tell whether the file exists: PostgreSQL must abort recovery
    /// (PostgreSQL treats exit codes above 125 as fatal for restore_command).
    AbortRecovery = 200,
}

/// An error on its way out of `main`, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: ExitCode,
    /// Message for stderr (empty: print nothing).
    pub message: String,
}

impl Failure {
    /// A failure with an explicit code.
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A usage/configuration failure.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Usage, message)
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match e {
            EngineError::Config(_) | EngineError::Key(_) => ExitCode::Usage,
            _ => ExitCode::Failed,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<pgcairn_storage::OpenError> for Failure {
    fn from(e: pgcairn_storage::OpenError) -> Self {
        Failure::usage(e.to_string())
    }
}
