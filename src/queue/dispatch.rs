//! The dispatch rules (docs/design.md#caps), as plain values: which of the queued
//! windows may start now. The launcher's tick and a job worker taking its next window both
//! apply them, through `queue::claim`.
//!
//! - a store runs one window at a time, whatever the run;
//! - a run runs at most its `max_workers` windows at once, and all runs together at most
//!   `orders_sync.max_workers`;
//! - a store's windows of a run start in date order, and none after one failed or partial
//!   (the candidates given here are already each store's first open window, queued ones only).

use std::collections::{HashMap, HashSet};

/// A store's first queued window of a run, in the order it should be considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub job_id: i64,
    pub run_id: String,
    pub store_code: String,
    /// The run's `max_workers`.
    pub run_cap: i64,
}

/// A job that is running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub run_id: String,
    pub store_code: String,
}

/// The candidates that may start now, at most `limit`, in the order given.
pub fn choose(candidates: &[Candidate], running: &[RunningJob], cluster_cap: i64, limit: usize) -> Vec<Candidate> {
    let mut total = running.len() as i64;
    let mut by_run: HashMap<&str, i64> = HashMap::new();
    let mut busy_stores: HashSet<&str> = HashSet::new();
    for job in running {
        *by_run.entry(job.run_id.as_str()).or_insert(0) += 1;
        busy_stores.insert(job.store_code.as_str());
    }
    let mut chosen = Vec::new();
    for candidate in candidates {
        if total >= cluster_cap || chosen.len() >= limit {
            break;
        }
        let in_run = by_run.entry(candidate.run_id.as_str()).or_insert(0);
        if *in_run >= candidate.run_cap || !busy_stores.insert(candidate.store_code.as_str()) {
            continue;
        }
        *in_run += 1;
        total += 1;
        chosen.push(candidate.clone());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate(job_id: i64, run_id: &str, store_code: &str, run_cap: i64) -> Candidate {
        Candidate { job_id, run_id: run_id.into(), store_code: store_code.into(), run_cap }
    }

    fn running(run_id: &str, store_code: &str) -> RunningJob {
        RunningJob { run_id: run_id.into(), store_code: store_code.into() }
    }

    fn ids(chosen: &[Candidate]) -> Vec<i64> {
        chosen.iter().map(|c| c.job_id).collect()
    }

    #[test]
    fn a_busy_store_waits_even_for_another_run() {
        let chosen = choose(&[candidate(1, "r2", "S1", 4), candidate(2, "r2", "S2", 4)], &[running("r1", "S1")], 8, 10);
        assert_eq!(ids(&chosen), vec![2]);
    }

    #[test]
    fn each_run_keeps_to_its_own_cap() {
        let candidates = [candidate(1, "r1", "A", 2), candidate(2, "r1", "B", 2), candidate(3, "r2", "C", 1)];
        assert_eq!(ids(&choose(&candidates, &[running("r1", "Z")], 8, 10)), vec![1, 3]);
    }

    #[test]
    fn the_cluster_cap_holds_over_all_runs() {
        let candidates = [candidate(1, "r1", "A", 8), candidate(2, "r2", "B", 8), candidate(3, "r3", "C", 8)];
        assert_eq!(ids(&choose(&candidates, &[running("r0", "Z")], 3, 10)), vec![1, 2]);
        assert!(choose(&candidates, &[running("r0", "Z")], 1, 10).is_empty());
    }

    #[test]
    fn a_worker_taking_its_next_window_claims_one() {
        let candidates = [candidate(1, "r1", "A", 8), candidate(2, "r1", "B", 8)];
        assert_eq!(ids(&choose(&candidates, &[], 8, 1)), vec![1]);
    }

    proptest! {
        #[test]
        fn no_cap_is_ever_exceeded(
            cands in proptest::collection::vec((0u8..3, 0u8..6), 0..30),
            runs in proptest::collection::vec((0u8..3, 0u8..6), 0..6),
            caps in proptest::collection::vec(1i64..4, 3),
            cluster_cap in 1i64..10,
        ) {
            // One cap per run, as a run's max_workers is.
            let candidates: Vec<Candidate> = cands.iter().enumerate()
                .map(|(i, (r, s))| candidate(i as i64, &format!("r{r}"), &format!("S{s}"), caps[*r as usize])).collect();
            let running: Vec<RunningJob> = runs.iter().map(|(r, s)| running(&format!("r{r}"), &format!("S{s}"))).collect();
            let chosen = choose(&candidates, &running, cluster_cap, usize::MAX);
            prop_assert!(running.len() as i64 + chosen.len() as i64 <= cluster_cap.max(running.len() as i64));
            let mut stores: HashSet<&str> = running.iter().map(|j| j.store_code.as_str()).collect();
            for c in &chosen {
                prop_assert!(stores.insert(c.store_code.as_str()), "store {} started twice", c.store_code);
                let in_run = running.iter().filter(|j| j.run_id == c.run_id).count()
                    + chosen.iter().filter(|o| o.run_id == c.run_id).count();
                prop_assert!(in_run as i64 <= c.run_cap.max(running.iter().filter(|j| j.run_id == c.run_id).count() as i64));
            }
        }
    }
}
