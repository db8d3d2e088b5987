//! The dispatch rules (docs/design.md#caps), as plain values: which of the queued
//! windows may start now. The launcher's tick and a job worker taking its next window both
//! apply them, through `queue::claim`.
//!
//! - a store runs one window at a time, whatever the run;
//! - a run runs at most its `max_workers` windows at once, and all runs together at most
//!   `orders_sync.max_workers`;
//! - a pipeline whose profile sets `limits.max_concurrent_stores` runs at most that many
//!   windows at once, all runs together (docs/design.md#limits);
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
    pub pipeline_id: i64,
    /// The pipeline's `limits.max_concurrent_stores`; `None`: no cap of its own.
    pub pipeline_cap: Option<i64>,
}

/// A job that is running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub run_id: String,
    pub pipeline_id: i64,
    pub store_code: String,
}

/// The candidates that may start now, at most `limit`, in the order given.
pub fn choose(candidates: &[Candidate], running: &[RunningJob], cluster_cap: i64, limit: usize) -> Vec<Candidate> {
    let mut total = running.len() as i64;
    let mut by_run: HashMap<&str, i64> = HashMap::new();
    let mut by_pipeline: HashMap<i64, i64> = HashMap::new();
    let mut busy_stores: HashSet<&str> = HashSet::new();
    for job in running {
        *by_run.entry(job.run_id.as_str()).or_insert(0) += 1;
        *by_pipeline.entry(job.pipeline_id).or_insert(0) += 1;
        busy_stores.insert(job.store_code.as_str());
    }
    let mut chosen = Vec::new();
    for candidate in candidates {
        if total >= cluster_cap || chosen.len() >= limit {
            break;
        }
        let in_run = by_run.entry(candidate.run_id.as_str()).or_insert(0);
        let in_pipeline = by_pipeline.entry(candidate.pipeline_id).or_insert(0);
        if *in_run >= candidate.run_cap
            || candidate.pipeline_cap.is_some_and(|cap| *in_pipeline >= cap)
            || !busy_stores.insert(candidate.store_code.as_str())
        {
            continue;
        }
        *in_run += 1;
        *in_pipeline += 1;
        total += 1;
        chosen.push(candidate.clone());
    }
    chosen
}

/// What a job worker whose window has just ended may take without counting the running jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOn {
    /// The first candidate whose store is free: it takes the worker's slot.
    To(Candidate),
    /// The first candidate whose store is free belongs to a pipeline with a cap of its own:
    /// only the pipeline's running jobs can say whether it may start.
    NeedsCount,
    /// Every candidate's store runs a window now.
    NoneFree,
}

/// The worker's slot handed on to the first of `candidates` (windows of the worker's own run,
/// in the order to consider them) whose store is not among `busy_stores`. Handing on keeps the
/// run's count and the cluster's count as they were while the worker's window ran, so neither
/// needs counting; that is what keeps a worker's claim flat however many windows the run has
/// already run (docs/design.md#caps). A pipeline's own cap is counted, so that a cap lowered
/// while the run goes on takes effect at once.
pub fn hand_on(candidates: &[Candidate], busy_stores: &HashSet<String>) -> HandOn {
    match candidates.iter().find(|c| !busy_stores.contains(&c.store_code)) {
        None => HandOn::NoneFree,
        Some(c) if c.pipeline_cap.is_some() => HandOn::NeedsCount,
        Some(c) => HandOn::To(c.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate(job_id: i64, run_id: &str, store_code: &str, run_cap: i64) -> Candidate {
        Candidate {
            job_id,
            run_id: run_id.into(),
            store_code: store_code.into(),
            run_cap,
            pipeline_id: 1,
            pipeline_cap: None,
        }
    }

    /// A candidate of pipeline `pipeline_id`, capped at `pipeline_cap` stores at once.
    fn of_pipeline(candidate: Candidate, pipeline_id: i64, pipeline_cap: Option<i64>) -> Candidate {
        Candidate { pipeline_id, pipeline_cap, ..candidate }
    }

    fn running(run_id: &str, store_code: &str) -> RunningJob {
        RunningJob { run_id: run_id.into(), pipeline_id: 1, store_code: store_code.into() }
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

    #[test]
    fn a_pipeline_keeps_to_its_max_concurrent_stores_over_all_runs() {
        // Pipeline 2 (cap 2) already runs a store in another run; pipeline 3 has no cap.
        let capped = |job, run, store| of_pipeline(candidate(job, run, store, 8), 2, Some(2));
        let candidates = [
            capped(1, "r1", "A"),
            capped(2, "r1", "B"),
            capped(3, "r2", "C"),
            of_pipeline(candidate(4, "r1", "D", 8), 3, None),
            of_pipeline(candidate(5, "r1", "E", 8), 3, None),
        ];
        let running = [RunningJob { run_id: "r0".into(), pipeline_id: 2, store_code: "Z".into() }];
        assert_eq!(ids(&choose(&candidates, &running, 8, 10)), vec![1, 4, 5]);
        // Without the running job, two of the capped pipeline's stores start.
        assert_eq!(ids(&choose(&candidates, &[], 8, 10)), vec![1, 2, 4, 5]);
    }

    #[test]
    fn a_worker_hands_its_slot_to_the_first_free_store() {
        let candidates = [candidate(1, "r1", "A", 2), candidate(2, "r1", "B", 2)];
        let busy: HashSet<String> = ["A".to_owned()].into();
        assert_eq!(hand_on(&candidates, &busy), HandOn::To(candidates[1].clone()));
        assert_eq!(hand_on(&candidates, &HashSet::new()), HandOn::To(candidates[0].clone()));
        let all: HashSet<String> = ["A".to_owned(), "B".to_owned()].into();
        assert_eq!(hand_on(&candidates, &all), HandOn::NoneFree);
        assert_eq!(hand_on(&[], &HashSet::new()), HandOn::NoneFree);
    }

    #[test]
    fn a_capped_pipeline_is_counted_not_handed_on() {
        let candidates = [of_pipeline(candidate(1, "r1", "A", 2), 2, Some(3)), candidate(2, "r1", "B", 2)];
        assert_eq!(hand_on(&candidates, &HashSet::new()), HandOn::NeedsCount);
        // A busy store is passed over before the cap is looked at.
        let busy: HashSet<String> = ["A".to_owned()].into();
        assert_eq!(hand_on(&candidates, &busy), HandOn::To(candidates[1].clone()));
    }

    proptest! {
        /// The pipeline cap alone: however candidates and running jobs fall over pipelines,
        /// no capped pipeline ends up with more than its cap running (unless it already had),
        /// and no store waits for a cap that is not full.
        #[test]
        fn no_pipeline_runs_more_stores_than_its_cap(
            cands in proptest::collection::vec((0i64..3, 0u8..12), 0..30),
            runs in proptest::collection::vec((0i64..3, 12u8..16), 0..6),
            caps in proptest::collection::vec(proptest::option::of(1i64..4), 3),
        ) {
            let candidates: Vec<Candidate> = cands.iter().enumerate()
                .map(|(i, (p, s))| of_pipeline(candidate(i as i64, "r1", &format!("S{s}"), 64), *p, caps[*p as usize]))
                .collect();
            let running: Vec<RunningJob> = runs.iter()
                .map(|(p, s)| RunningJob { run_id: "r0".into(), pipeline_id: *p, store_code: format!("S{s}") })
                .collect();
            let chosen = choose(&candidates, &running, 64, usize::MAX);
            let count = |pipeline: i64| {
                let before = running.iter().filter(|j| j.pipeline_id == pipeline).count() as i64;
                (before, before + chosen.iter().filter(|c| c.pipeline_id == pipeline).count() as i64)
            };
            for (pipeline, cap) in caps.iter().enumerate() {
                let (before, after) = count(pipeline as i64);
                if let Some(cap) = cap {
                    prop_assert!(after <= (*cap).max(before), "pipeline {pipeline}: {after} running, cap {cap}");
                }
            }
            for c in candidates.iter().filter(|c| chosen.iter().all(|o| o.job_id != c.job_id)) {
                let store_busy = running.iter().any(|j| j.store_code == c.store_code)
                    || chosen.iter().any(|o| o.store_code == c.store_code);
                let pipeline_full = c.pipeline_cap.is_some_and(|cap| count(c.pipeline_id).1 >= cap);
                prop_assert!(store_busy || pipeline_full, "job {} waited for nothing", c.job_id);
            }
        }

        /// Handing on decides as counting would: whenever the worker's slot is free (its run
        /// and the cluster below their caps without it), the window handed on is the one
        /// `choose` picks from the same candidates, and nothing is handed on when `choose`
        /// finds nothing.
        #[test]
        fn handing_on_picks_what_counting_would(
            cands in proptest::collection::vec((0u8..8, proptest::option::of(1i64..3)), 0..12),
            others in proptest::collection::vec((0u8..2, 0u8..12), 0..4),
            run_cap in 1i64..6,
        ) {
            let candidates: Vec<Candidate> = cands.iter().enumerate()
                .map(|(i, (s, cap))| of_pipeline(candidate(i as i64, "r1", &format!("S{s}"), run_cap), 1 + i64::from(cap.is_some()), *cap))
                .collect();
            let running: Vec<RunningJob> = others.iter()
                .map(|(r, s)| running(&format!("r{r}"), &format!("S{s}")))
                .collect();
            let in_run = running.iter().filter(|j| j.run_id == "r1").count() as i64;
            prop_assume!(in_run < run_cap);
            let cluster_cap = running.len() as i64 + 1;
            let busy: HashSet<String> = running.iter().map(|j| j.store_code.clone()).collect();
            let chosen = choose(&candidates, &running, cluster_cap, 1);
            match hand_on(&candidates, &busy) {
                HandOn::To(c) => prop_assert_eq!(chosen, vec![c]),
                HandOn::NoneFree => prop_assert!(chosen.is_empty()),
                HandOn::NeedsCount => {}
            }
        }

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
