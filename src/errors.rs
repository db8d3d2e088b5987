//! SQL errors a DBA can act on: a SQLSTATE, a message naming what was wrong, a detail and a
//! hint. Helpers return them as values; only the functions exposed to SQL raise them.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl SqlError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        SqlError { code, message: message.into(), detail: None, hint: None }
    }

    /// An argument of a SQL function is out of range or unknown; the message names it.
    pub fn invalid_argument(argument: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid argument {argument}: {problem}"))
    }

    /// Something that should not happen did (an SPI failure, a worker that died).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Raise as an ERROR; the current transaction is aborted. Only the functions exposed to
    /// SQL call this.
    pub fn raise(self) -> ! {
        ErrorReport::from(self).report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SqlError> for ErrorReport {
    fn from(error: SqlError) -> Self {
        let mut report = ErrorReport::new(error.code, error.message, "orders_sync");
        if let Some(detail) = error.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = error.hint {
            report = report.set_hint(hint);
        }
        report
    }
}

/// An SPI failure under a SQL function is an internal error: the statements are ours.
impl From<pgrx::spi::Error> for SqlError {
    fn from(error: pgrx::spi::Error) -> Self {
        SqlError::internal(error.to_string())
    }
}

/// Result of a helper under a SQL function.
pub type SqlResult<T> = Result<T, SqlError>;

/// Raises the error of a SQL function's body; the one place the boundary crosses.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Into<SqlError>> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|error| error.into().raise())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_errors_name_the_argument_and_keep_hint_and_detail() {
        let error = SqlError::invalid_argument("window_days", "must be between 1 and 3660, got 0")
            .with_hint("Pass 1..3660.")
            .with_detail("seen 0");
        assert_eq!(error.code, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE);
        assert_eq!(error.message, "invalid argument window_days: must be between 1 and 3660, got 0");
        assert_eq!(error.hint.as_deref(), Some("Pass 1..3660."));
        assert_eq!(error.detail.as_deref(), Some("seen 0"));
    }
}
