//! SQL errors a DBA can act on: a SQLSTATE, a message naming what was wrong and a hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub hint: Option<String>,
}

impl SqlError {
    /// An argument of a SQL function is out of range or unknown; the message names it.
    pub fn invalid_argument(argument: &str, problem: impl std::fmt::Display) -> Self {
        SqlError {
            code: PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message: format!("invalid argument {argument}: {problem}"),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Raise as an ERROR; the current transaction is aborted.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "orders_sync");
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl SqlError {
    /// Something that should not happen did (an SPI failure, a worker that died).
    pub fn internal(message: impl Into<String>) -> Self {
        SqlError { code: PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message: message.into(), hint: None }
    }
}
