//! Status rules of a window (docs/design.md#statuses), as plain values.
//!
//! A pipeline's streams are pulled in order. The first stream is order data (TD `orders`,
//! UC `gst`), the second, when the pipeline has one, sales data (TD `sales`):
//!
//! | outcome                                   | status    |
//! |-------------------------------------------|-----------|
//! | every selected stream pulled              | `success` |
//! | the first selected stream failed          | `failed`  |
//! | the first pulled, a later one failed      | `partial` |
//!
//! `orders_only` / `sales_only` select one stream; the window is then `success` or `failed`
//! by that stream alone.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStatus {
    Success,
    Partial,
    Failed,
}

impl WindowStatus {
    pub fn parse(text: &str) -> Option<WindowStatus> {
        match text {
            "success" => Some(WindowStatus::Success),
            "partial" => Some(WindowStatus::Partial),
            "failed" => Some(WindowStatus::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WindowStatus::Success => "success",
            WindowStatus::Partial => "partial",
            WindowStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for WindowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status (`sync_jobs.status`): a window queued, running, ended, or skipped after an
/// earlier window of its store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Ended(WindowStatus),
    Skipped,
}

impl JobStatus {
    pub fn parse(text: &str) -> Option<JobStatus> {
        Some(match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "skipped" => JobStatus::Skipped,
            other => JobStatus::Ended(WindowStatus::parse(other)?),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Ended(status) => status.as_str(),
            JobStatus::Skipped => "skipped",
        }
    }

    /// Whether the job's worker is done with it (or it never needs one).
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Ended(_) | JobStatus::Skipped)
    }
}

/// A run's status (`pipeline_run_summaries.overall_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Ended(WindowStatus),
}

impl RunStatus {
    pub fn parse(text: &str) -> Option<RunStatus> {
        match text {
            "running" => Some(RunStatus::Running),
            other => WindowStatus::parse(other).map(RunStatus::Ended),
        }
    }
}

/// The `error_message` of a window (and the summary of a run) whose worker was found gone.
pub const STUCK_MESSAGE: &str = "Auto-reset: stuck in running state";

/// What the planner worker records in a run's `counts` when it could not plan the run, so
/// that the waiting `run_profiler` tells a planning failure from a run that failed.
pub const PLANNING_FAILED_KEY: &str = "planning_failed";

/// Which log stamp a stream sets when it has been pulled completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulledStamp {
    Orders,
    Sales,
}

impl PulledStamp {
    /// The stamp of the stream at `position` in the pipeline's `streams` (0-based).
    pub fn for_position(position: usize) -> PulledStamp {
        if position == 0 {
            PulledStamp::Orders
        } else {
            PulledStamp::Sales
        }
    }

    /// The log column this stamp sets (a fixed identifier, safe to put in a query).
    pub fn column(self) -> &'static str {
        match self {
            PulledStamp::Orders => "orders_pulled_at",
            PulledStamp::Sales => "sales_pulled_at",
        }
    }
}

/// The streams of `pipeline_streams` a window pulls, honouring TD's flags.
pub fn select_streams(pipeline_streams: &[String], orders_only: bool, sales_only: bool) -> Result<Vec<String>, String> {
    match (orders_only, sales_only) {
        (true, true) => Err("orders_only and sales_only cannot both be true".into()),
        (true, false) => Ok(pipeline_streams.iter().take(1).cloned().collect()),
        (false, true) => match pipeline_streams.get(1) {
            Some(sales) => Ok(vec![sales.clone()]),
            None => Err(format!(
                "sales_only needs a pipeline with a sales stream; this one has only {}",
                pipeline_streams.join(", ")
            )),
        },
        (false, false) => Ok(pipeline_streams.to_vec()),
    }
}

/// Status of a window from whether each selected stream (in pull order) succeeded.
/// Streams after a failed first stream are not pulled and so not listed.
pub fn window_status(pulled: &[bool]) -> WindowStatus {
    match pulled.first() {
        None | Some(false) => WindowStatus::Failed,
        Some(true) if pulled.iter().all(|ok| *ok) => WindowStatus::Success,
        Some(true) => WindowStatus::Partial,
    }
}

/// Whether pulling should go on after a stream's result: a failed first stream ends it.
pub fn continue_after(position_in_selection: usize, pulled: bool) -> bool {
    pulled || position_in_selection > 0
}

/// How a run's windows ended, for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCounts {
    pub pipeline: String,
    pub success: i64,
    pub partial: i64,
    pub failed: i64,
    pub skipped: i64,
}

pub struct RunSummary {
    pub status: WindowStatus,
    pub text: String,
    pub counts_json: String,
}

/// End-of-run rule (docs/design.md#statuses): `success` if every window succeeded, `failed` if any
/// failed, `partial` if the only non-successes are partials. Windows skipped after a
/// store's failure count with neither: the failure that caused them already decides.
pub fn run_summary(counts: &[RunCounts]) -> RunSummary {
    let failed: i64 = counts.iter().map(|c| c.failed).sum();
    let partial: i64 = counts.iter().map(|c| c.partial).sum();
    let status = if failed > 0 {
        WindowStatus::Failed
    } else if partial > 0 {
        WindowStatus::Partial
    } else {
        WindowStatus::Success
    };
    let text = if counts.is_empty() {
        "no windows to run".to_string()
    } else {
        counts
            .iter()
            .map(|c| {
                let mut line =
                    format!("{}: {} success, {} partial, {} failed", c.pipeline, c.success, c.partial, c.failed);
                if c.skipped > 0 {
                    line.push_str(&format!(", {} skipped", c.skipped));
                }
                line
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let per_pipeline: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|c| {
            (
                c.pipeline.clone(),
                serde_json::json!({"success": c.success, "partial": c.partial, "failed": c.failed, "skipped": c.skipped}),
            )
        })
        .collect();
    RunSummary { status, text, counts_json: serde_json::Value::Object(per_pipeline).to_string() }
}

/// Where a run stands while a caller waits for it (`run_profiler(..., wait => true)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunProgress {
    pub total: i64,
    pub done: i64,
    pub running: i64,
    pub queued: i64,
    pub failed: i64,
    pub rows_written: i64,
}

impl RunProgress {
    /// One NOTICE line: a DBA watching `psql` sees the run advance.
    pub fn describe(&self, run_id: &str) -> String {
        let mut line = format!(
            "run {run_id}: {}/{} windows done, {} running, {} queued, {} rows written",
            self.done, self.total, self.running, self.queued, self.rows_written
        );
        if self.failed > 0 {
            line.push_str(&format!(", {} failed", self.failed));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_what_they_write() {
        for text in ["queued", "running", "success", "partial", "failed", "skipped"] {
            assert_eq!(JobStatus::parse(text).map(JobStatus::as_str), Some(text));
        }
        assert_eq!(JobStatus::parse("done"), None);
        assert!(JobStatus::parse("skipped").unwrap().is_final());
        assert!(!JobStatus::parse("queued").unwrap().is_final());
        assert_eq!(RunStatus::parse("partial"), Some(RunStatus::Ended(WindowStatus::Partial)));
        assert_eq!(RunStatus::parse("running"), Some(RunStatus::Running));
        assert_eq!(RunStatus::parse("skipped"), None);
    }

    fn td() -> Vec<String> {
        vec!["orders".into(), "sales".into()]
    }

    #[test]
    fn td_both_streams_pulled_is_success() {
        assert_eq!(window_status(&[true, true]), WindowStatus::Success);
    }

    #[test]
    fn td_orders_ok_sales_failed_is_partial() {
        assert_eq!(window_status(&[true, false]), WindowStatus::Partial);
    }

    #[test]
    fn td_orders_failed_is_failed_and_stops_the_window() {
        assert_eq!(window_status(&[false]), WindowStatus::Failed);
        assert!(!continue_after(0, false));
        assert!(continue_after(1, false), "a failed sales stream is the last one anyway");
    }

    #[test]
    fn uc_single_stream_is_success_or_failed() {
        assert_eq!(window_status(&[true]), WindowStatus::Success);
        assert_eq!(window_status(&[false]), WindowStatus::Failed);
    }

    #[test]
    fn flags_select_one_stream() {
        assert_eq!(select_streams(&td(), true, false).unwrap(), ["orders"]);
        assert_eq!(select_streams(&td(), false, true).unwrap(), ["sales"]);
        assert_eq!(select_streams(&td(), false, false).unwrap(), ["orders", "sales"]);
        assert!(select_streams(&td(), true, true).is_err());
        assert!(select_streams(&["gst".to_string()], false, true).is_err());
        // sales_only pulls one stream: its failure is the window's failure, not a partial.
        assert_eq!(window_status(&[false]), WindowStatus::Failed);
    }

    fn counts(pipeline: &str, success: i64, partial: i64, failed: i64) -> RunCounts {
        RunCounts { pipeline: pipeline.into(), success, partial, failed, skipped: 0 }
    }

    #[test]
    fn run_is_success_only_when_every_window_succeeded() {
        let summary = run_summary(&[counts("td_orders_sync", 3, 0, 0), counts("uc_orders_sync", 2, 0, 0)]);
        assert_eq!(summary.status, WindowStatus::Success);
        assert_eq!(
            summary.text,
            "td_orders_sync: 3 success, 0 partial, 0 failed; uc_orders_sync: 2 success, 0 partial, 0 failed"
        );
        assert_eq!(
            summary.counts_json,
            r#"{"td_orders_sync":{"failed":0,"partial":0,"skipped":0,"success":3},"uc_orders_sync":{"failed":0,"partial":0,"skipped":0,"success":2}}"#
        );
    }

    #[test]
    fn any_failure_fails_the_run_and_partials_alone_make_it_partial() {
        assert_eq!(run_summary(&[counts("a", 5, 1, 1)]).status, WindowStatus::Failed);
        assert_eq!(run_summary(&[counts("a", 5, 1, 0), counts("b", 1, 0, 0)]).status, WindowStatus::Partial);
        assert_eq!(run_summary(&[]).status, WindowStatus::Success);
    }

    #[test]
    fn progress_line_says_what_is_done_running_and_queued() {
        let progress = RunProgress { total: 100, done: 40, running: 3, queued: 57, failed: 0, rows_written: 123_456 };
        assert_eq!(
            progress.describe("rp-1"),
            "run rp-1: 40/100 windows done, 3 running, 57 queued, 123456 rows written"
        );
        let failing = RunProgress { failed: 2, ..progress };
        assert!(failing.describe("rp-1").ends_with(", 2 failed"));
    }

    #[test]
    fn stamps_follow_stream_position() {
        assert_eq!(PulledStamp::for_position(0).column(), "orders_pulled_at");
        assert_eq!(PulledStamp::for_position(1).column(), "sales_pulled_at");
    }
}
