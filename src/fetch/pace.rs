//! Pacing: a pipeline's `limits.requests_per_second`, held across every worker of the cluster
//! (docs/design.md#limits).
//!
//! GCRA (the generic cell rate algorithm) with a burst of 1: each pipeline has a theoretical
//! arrival time (TAT), the earliest instant its next request may be sent. A caller reserves
//! `max(now, TAT)` for itself and moves the TAT one interval (1/rate) past it with a CAS, then
//! sleeps until its reserved instant. Reservations never overlap, so no two requests of a
//! pipeline are ever sent closer than one interval, whichever processes or threads send them.
//!
//! The TATs live in a table of (key, TAT) slot pairs: in PostgreSQL shared memory
//! (`shared_memory::pace_table`) when the library was preloaded, so that every worker of the
//! cluster shares them; otherwise, or when that table is full, in a table of this process, and
//! the cap then holds per process. Plain atomics only: callable from any thread, no PostgreSQL
//! call, no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::sleep_unless_stopped;

const NANOS_PER_SECOND: f64 = 1e9;
/// Pipelines one table paces at once (a slot is a key and a TAT).
pub const SLOTS: usize = 64;
/// A slot's key when no pipeline has claimed it.
const EMPTY: u64 = 0;

/// The interval between two requests at `requests_per_second`, in nanoseconds; `None` for a
/// rate that paces nothing (not a positive finite number).
pub fn interval_ns(requests_per_second: f64) -> Option<u64> {
    if !(requests_per_second.is_finite() && requests_per_second > 0.0) {
        return None;
    }
    // At least 1 ns; `as` saturates a rate too low to express at u64::MAX (never sent again).
    Some((NANOS_PER_SECOND / requests_per_second).round().max(1.0) as u64)
}

/// Reserves the next send time at `now_ns` for a source paced at one request per
/// `interval_ns`, whose theoretical arrival time is `tat`. Returns how long the caller must wait
/// before sending (0: send now).
pub fn reserve(tat: &AtomicU64, now_ns: u64, interval_ns: u64) -> u64 {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let send_at = current.max(now_ns);
        let next = send_at.saturating_add(interval_ns);
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return send_at - now_ns,
            Err(seen) => current = seen,
        }
    }
}

/// A table of `SLOTS` (key, TAT) pairs laid out flat: `[key0, tat0, key1, tat1, ...]`. A slot is
/// claimed once, by a CAS of its key from empty, and never given back (a table lives as long as
/// its process or its cluster), so two callers probing for the same key always stop at the
/// same slot.
pub struct PaceTable<'a> {
    slots: &'a [AtomicU64],
}

impl<'a> PaceTable<'a> {
    pub fn new(slots: &'a [AtomicU64]) -> Self {
        debug_assert!(slots.len().is_multiple_of(2));
        PaceTable { slots }
    }

    /// The TAT of `pipeline_id`, claiming a slot for it when it has none; `None` when the table
    /// is full, or for an id that cannot be a key (0).
    pub fn tat_of(&self, pipeline_id: i64) -> Option<&'a AtomicU64> {
        let key = pipeline_id as u64;
        let pairs = self.slots.len() / 2;
        if key == EMPTY || pairs == 0 {
            return None;
        }
        let start = (key % pairs as u64) as usize;
        for probe in 0..pairs {
            let slot = (start + probe) % pairs;
            let slot_key = &self.slots[2 * slot];
            let owner = match slot_key.compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => key,
                Err(owner) => owner,
            };
            if owner == key {
                return Some(&self.slots[2 * slot + 1]);
            }
        }
        None
    }
}

/// This process's table, for when shared memory is not there or its table is full.
static LOCAL_TABLE: [AtomicU64; 2 * SLOTS] = [const { AtomicU64::new(0) }; 2 * SLOTS];
/// The TAT shared by pipelines that find both tables full: each still keeps its own rate
/// (pacing them one after another only adds waits).
static LOCAL_OVERFLOW: AtomicU64 = AtomicU64::new(0);

/// Where `pipeline_id`'s TAT lives: the cluster's table when there is a slot in it, else this
/// process's.
fn tat_for(pipeline_id: i64) -> &'static AtomicU64 {
    crate::shared_memory::pace_table()
        .and_then(|slots| PaceTable::new(slots).tat_of(pipeline_id))
        .or_else(|| PaceTable::new(&LOCAL_TABLE).tat_of(pipeline_id))
        .unwrap_or(&LOCAL_OVERFLOW)
}

/// Nanoseconds on the system-wide monotonic clock: the same in every process of the machine,
/// and not moved by changes to the wall clock.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists on
    // the platforms PostgreSQL runs on here.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// Waits for `pipeline_id`'s turn to send one request at `requests_per_second`, across the
/// cluster. Sleeps in slices of at most 50 ms, polling `should_stop`; false when it said stop
/// (the turn reserved is then lost, which only makes the pipeline slower). A rate that is not
/// a positive finite number paces nothing. Plain atomics: callable from any thread.
pub fn wait_turn(pipeline_id: i64, requests_per_second: f64, should_stop: &dyn Fn() -> bool) -> bool {
    if should_stop() {
        return false;
    }
    let Some(interval) = interval_ns(requests_per_second) else {
        return true;
    };
    let wait = reserve(tat_for(pipeline_id), monotonic_ns(), interval);
    wait == 0 || sleep_unless_stopped(Duration::from_nanos(wait), should_stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    const MS: u64 = 1_000_000;

    #[test]
    fn an_idle_source_is_sent_to_at_once_and_the_next_request_waits_one_interval() {
        let tat = AtomicU64::new(0);
        assert_eq!(reserve(&tat, 1_000 * MS, 200 * MS), 0);
        assert_eq!(reserve(&tat, 1_050 * MS, 200 * MS), 150 * MS);
        assert_eq!(reserve(&tat, 1_050 * MS, 200 * MS), 350 * MS);
        // Idle for long: no credit is saved up (burst 1), the next request goes at once.
        assert_eq!(reserve(&tat, 9_000 * MS, 200 * MS), 0);
        assert_eq!(reserve(&tat, 9_000 * MS, 200 * MS), 200 * MS);
    }

    #[test]
    fn rates_that_pace_nothing_are_refused_and_slow_rates_are_exact() {
        assert_eq!(interval_ns(5.0), Some(200 * MS));
        assert_eq!(interval_ns(0.5), Some(2_000 * MS));
        assert_eq!(interval_ns(1e12), Some(1));
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(interval_ns(rate), None, "{rate}");
        }
    }

    #[test]
    fn each_pipeline_keeps_one_slot_and_a_full_table_says_so() {
        let slots: Vec<AtomicU64> = (0..6).map(|_| AtomicU64::new(0)).collect();
        let table = PaceTable::new(&slots);
        let a = table.tat_of(7).unwrap() as *const AtomicU64;
        let b = table.tat_of(10).unwrap() as *const AtomicU64;
        let c = table.tat_of(4).unwrap() as *const AtomicU64;
        assert_eq!(table.tat_of(7).unwrap() as *const AtomicU64, a);
        assert_eq!(table.tat_of(10).unwrap() as *const AtomicU64, b);
        assert!(a != b && b != c && a != c);
        assert!(table.tat_of(11).is_none(), "three slots, three pipelines: full");
        assert!(table.tat_of(0).is_none(), "0 is the empty key");
    }

    #[test]
    fn threads_claiming_the_same_pipeline_all_get_the_same_slot() {
        let slots: Arc<Vec<AtomicU64>> = Arc::new((0..2 * SLOTS).map(|_| AtomicU64::new(0)).collect());
        let barrier = Arc::new(Barrier::new(8));
        let found: Vec<usize> = (0..8)
            .map(|i| {
                let (slots, barrier) = (slots.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let table = PaceTable::new(&slots);
                    // Others claim their own pipelines at the same time.
                    table.tat_of(100 + i).unwrap();
                    table.tat_of(42).unwrap() as *const AtomicU64 as usize
                })
            })
            .collect::<Vec<_>>() // every thread started before any is joined
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(found.iter().all(|&p| p == found[0]), "{found:?}");
        let keys: Vec<u64> = slots.iter().step_by(2).map(|k| k.load(Ordering::Relaxed)).filter(|&k| k != 0).collect();
        assert_eq!(keys.len(), 9, "one slot per pipeline: {keys:?}");
    }

    /// `threads` × `per_thread` turns of `pipeline_id` at `rate` taken with `wait_turn` (real
    /// clock, real sleeps) all at once: how long they took.
    fn take_turns(pipeline_id: i64, rate: f64, threads: usize, per_thread: usize) -> Duration {
        let barrier = Arc::new(Barrier::new(threads));
        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        assert!(wait_turn(pipeline_id, rate, &|| false));
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        started.elapsed()
    }

    #[test]
    fn four_threads_at_50_per_second_send_20_requests_in_19_intervals() {
        let took = take_turns(9_001, 50.0, 4, 5);
        assert!(took >= Duration::from_millis(19 * 20), "{took:?}");
        assert!(took < Duration::from_millis(19 * 20 + 400), "{took:?}");
    }

    #[test]
    fn four_threads_on_the_real_clock_are_handed_send_times_an_interval_apart() {
        let tat = Arc::new(AtomicU64::new(0));
        let interval = 3 * MS;
        let mut sends: Vec<u64> = (0..4)
            .map(|_| {
                let tat = tat.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| {
                            let now = monotonic_ns();
                            let send_at = now + reserve(&tat, now, interval);
                            std::thread::sleep(Duration::from_nanos(send_at.saturating_sub(monotonic_ns())));
                            send_at
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        sends.sort_unstable();
        assert!(sends.windows(2).all(|w| w[1] - w[0] >= interval));
        assert!(sends[sends.len() - 1] - sends[0] >= 199 * interval);
    }

    #[test]
    fn pipelines_are_paced_apart() {
        let start = Instant::now();
        let a = std::thread::spawn(|| take_turns(9_002, 20.0, 2, 3));
        let b = std::thread::spawn(|| take_turns(9_003, 20.0, 2, 3));
        a.join().unwrap();
        b.join().unwrap();
        // Six sends each at 50 ms: 250 ms; run one after the other it would take twice that.
        assert!(start.elapsed() < Duration::from_millis(480), "{:?}", start.elapsed());
    }

    #[test]
    fn a_stop_ends_the_wait_within_a_slice() {
        let stop = Arc::new(AtomicBool::new(false));
        assert!(wait_turn(9_004, 0.2, &|| false), "the first turn is free");
        let stopper = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            stopper.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        assert!(!wait_turn(9_004, 0.2, &|| stop.load(Ordering::Relaxed)), "the next is 5 s away");
        assert!(started.elapsed() < Duration::from_millis(100 + 200), "{:?}", started.elapsed());
        assert!(!wait_turn(9_005, 1.0, &|| true), "stopped before: no turn taken");
    }

    proptest! {
        /// The algorithm alone, on a virtual clock: whatever order threads arrive in, the send
        /// times handed out are at least one interval apart, and packed when callers are
        /// waiting (n sends arriving together span (n-1) intervals).
        #[test]
        fn reservations_never_overlap(
            interval in 1u64..1_000_000,
            arrivals in proptest::collection::vec(0u64..5_000_000, 1..200),
            threads in 1usize..5,
        ) {
            let tat = Arc::new(AtomicU64::new(0));
            let arrivals = Arc::new(arrivals);
            let barrier = Arc::new(Barrier::new(threads));
            let mut sends: Vec<u64> = (0..threads)
                .map(|t| {
                    let (tat, arrivals, barrier) = (tat.clone(), arrivals.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        arrivals.iter().skip(t).step_by(threads)
                            .map(|&now| now + reserve(&tat, now, interval))
                            .collect::<Vec<_>>()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            sends.sort_unstable();
            for pair in sends.windows(2) {
                prop_assert!(pair[1] - pair[0] >= interval, "{pair:?} closer than {interval}");
            }
            let n = sends.len() as u64;
            let earliest = *arrivals.iter().min().unwrap();
            prop_assert!(sends[0] >= earliest);
            prop_assert!(sends[sends.len() - 1] - sends[0] >= (n - 1) * interval);
        }

        #[test]
        fn callers_arriving_together_span_n_minus_1_intervals(interval in 1u64..1_000_000, n in 1u64..100) {
            let tat = AtomicU64::new(0);
            let sends: Vec<u64> = (0..n).map(|_| 1_000 + reserve(&tat, 1_000, interval)).collect();
            prop_assert_eq!(sends[0], 1_000);
            prop_assert_eq!(sends[sends.len() - 1] - sends[0], (n - 1) * interval);
        }
    }
}
