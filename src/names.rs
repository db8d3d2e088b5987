//! The alphabets of the names a caller passes: environment names and store codes. Each rule
//! is written here once; SQL (CHECK constraints, PL/pgSQL) asks `orders_sync.is_env_name`.

use pgrx::prelude::*;

use crate::errors::SqlError;

/// An environment name (`run_env`, `env`): 1 to 32 letters, digits, '_', '.' or '-'.
pub fn is_env_name(env: &str) -> bool {
    (1..=32).contains(&env.len()) && env.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The env-name rule for SQL: the CHECK constraint on `pipeline_run_summaries.run_env` and
/// `schedule_profiler`'s argument check.
#[pg_extern(name = "is_env_name", immutable, parallel_safe, strict)]
fn is_env_name_sql(env: &str) -> bool {
    is_env_name(env)
}

/// Validates an env-name argument of a SQL function; the error names `argument`.
pub fn env_argument(argument: &str, env: Option<&str>) -> Result<String, SqlError> {
    let hint = "Pass the environment the runs are recorded under, e.g. env => 'prod'.";
    match env {
        None => Err(SqlError::invalid_argument(argument, "must not be NULL").with_hint(hint)),
        Some(env) if is_env_name(env) => Ok(env.to_string()),
        Some(_) => {
            Err(SqlError::invalid_argument(argument, "must be 1 to 32 letters, digits, '_', '.' or '-'")
                .with_hint(hint))
        }
    }
}

/// The alphabet of `store_master.store_code` (its CHECK constraint).
pub fn is_store_code(code: &str) -> bool {
    let bytes = code.as_bytes();
    (1..=8).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_codes_follow_store_master() {
        assert!(is_store_code("S001"));
        assert!(is_store_code("a.b_c-12"));
        assert!(!is_store_code(""));
        assert!(!is_store_code("S00000001"));
        assert!(!is_store_code("../x"));
        assert!(!is_store_code("_S1"));
    }

    #[test]
    fn env_names_follow_run_summaries() {
        assert!(is_env_name("prod"));
        assert!(is_env_name("staging-2.eu_west"));
        assert!(!is_env_name(""));
        assert!(!is_env_name(&"x".repeat(33)));
        assert!(!is_env_name("prod; DROP"));
        assert!(!is_env_name("prod\tx"));
    }

    #[test]
    fn env_argument_errors_name_the_argument() {
        assert_eq!(
            env_argument("run_env", Some("a b")).unwrap_err().message,
            "invalid argument run_env: must be 1 to 32 letters, digits, '_', '.' or '-'"
        );
        assert_eq!(env_argument("env", None).unwrap_err().message, "invalid argument env: must not be NULL");
        assert_eq!(env_argument("env", Some("prod")).unwrap(), "prod");
    }
}
