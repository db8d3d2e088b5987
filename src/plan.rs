//! Which date windows of one store + pipeline to sync: plain values in, plain values out.
//!
//! The rules of docs/design.md#windows, including the repair of holes before the last success
//! (a window that failed while a later one succeeded is never re-run by a walk that only looks
//! forward from the last success). `sql` wraps this for the database.

pub mod sql;

use chrono::NaiveDate;

use crate::clock;
use std::cmp::{max, min};

/// Why a window is planned; `as_str` is the `reason` column of `plan_sync_windows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Days after the last success (or since `start_date` for a store never synced).
    Backfill,
    /// Days before the last success that no success window covers.
    Missing,
    /// The last `overlap_days` successful days, fetched again for late-arriving data.
    Overlap,
    /// The current-day refresh, when no other window already includes today.
    Today,
    /// `force`: every day from `start_date`, whatever the log says.
    Forced,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Backfill => "backfill",
            Reason::Missing => "missing",
            Reason::Overlap => "overlap",
            Reason::Today => "today",
            Reason::Forced => "forced",
        }
    }
}

/// One window of the plan, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedWindow {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub reason: Reason,
    pub will_run: bool,
}

/// The knobs of a run: `window_days` N (≥ 1), `overlap_days` K (≥ 0), `force`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub window_days: u32,
    pub overlap_days: u32,
    pub force: bool,
}

/// Plans one store + pipeline: the windows to consider, sorted by `from`, never overlapping,
/// none longer than `window_days`, all within `[start_date, today]`.
///
/// `successes` are the store's success windows in any order, overlapping or not. They are
/// clipped to `[start_date, today]` before anything else, so a success outside that span
/// (before a `start_date` that was moved later, or after an `as_of` in the past) counts for
/// nothing, and `last_success_to` is never after `today`.
pub fn plan_store(
    start_date: NaiveDate,
    successes: &[(NaiveDate, NaiveDate)],
    today: NaiveDate,
    policy: Policy,
) -> Vec<PlannedWindow> {
    let start = day_number(start_date);
    let today = day_number(today);
    if start > today {
        return Vec::new();
    }
    let chunk = i64::from(policy.window_days.max(1));
    let mut plan = Vec::new();
    if policy.force {
        push_chunks(&mut plan, start, today, chunk, |_, _| Reason::Forced);
        return plan;
    }

    let covered =
        merge_day_ranges(successes.iter().map(|&(from, to)| (day_number(from), day_number(to))), start, today);
    let Some(&(_, last_success_to)) = covered.last() else {
        push_chunks(&mut plan, start, today, chunk, |_, _| Reason::Backfill);
        return plan;
    };

    // The last K successful days are fetched again (a Jan-6 7pm success re-runs Jan 6).
    let overlap = i64::from(policy.overlap_days);
    let next_from = if overlap == 0 { last_success_to + 1 } else { max(start, last_success_to - overlap + 1) };

    // Holes before next_from: a forward-only walk would leave these missing forever
    // (docs/design.md#windows).
    // (The last covered range ends at last_success_to >= next_from - 1, so none is left after.)
    let mut cursor = start;
    for &(lo, hi) in &covered {
        if cursor >= next_from {
            break;
        }
        if cursor < lo {
            push_chunks(&mut plan, cursor, min(lo - 1, next_from - 1), chunk, |_, _| Reason::Missing);
        }
        cursor = max(cursor, hi + 1);
    }

    // Forward from next_from; when K > 0 the overlap range starts exactly there.
    let overlap_range = (next_from, last_success_to);
    push_chunks(&mut plan, next_from, today, chunk, |from, to| {
        if overlap > 0 && from <= overlap_range.1 && to >= overlap_range.0 {
            Reason::Overlap
        } else {
            Reason::Backfill
        }
    });

    // Only reached with K = 0 and a success ending today. The seed's rule (003 §6) names the
    // window by its exact dates: today runs again unless a success window is exactly
    // (today, today); a multi-day success that merely covers today does not count.
    let today_date = date_of(today);
    if !plan.iter().any(|w| w.from <= today_date && today_date <= w.to) {
        let today_succeeded = successes.iter().any(|&(from, to)| from == today_date && to == today_date);
        plan.push(PlannedWindow {
            from: today_date,
            to: today_date,
            reason: Reason::Today,
            will_run: !today_succeeded,
        });
    }
    plan
}

/// Clips day ranges (both ends included, any order, overlapping or not) to `[lo, hi]` and merges
/// overlapping and adjacent ones: the covered days as sorted, disjoint, non-adjacent ranges.
/// Works on any consistent day numbering (days since CE here, PostgreSQL's epoch in `sql`).
pub fn merge_day_ranges(ranges: impl IntoIterator<Item = (i64, i64)>, lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut clipped: Vec<(i64, i64)> =
        ranges.into_iter().map(|(from, to)| (max(from, lo), min(to, hi))).filter(|(from, to)| from <= to).collect();
    // The log arrives in index order, so this is usually already sorted.
    if !clipped.is_sorted() {
        clipped.sort_unstable();
    }
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(4);
    for (from, to) in clipped {
        match merged.last_mut() {
            Some(last) if from <= last.1 + 1 => last.1 = max(last.1, to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

/// Cuts `[from, to]` into consecutive windows of at most `chunk` days.
fn push_chunks(plan: &mut Vec<PlannedWindow>, from: i64, to: i64, chunk: i64, reason: impl Fn(i64, i64) -> Reason) {
    let mut window_from = from;
    while window_from <= to {
        let window_to = min(window_from + chunk - 1, to);
        plan.push(PlannedWindow {
            from: date_of(window_from),
            to: date_of(window_to),
            reason: reason(window_from, window_to),
            will_run: true,
        });
        window_from = window_to + 1;
    }
}

/// The planner counts days as PostgreSQL does (`clock::pg_epoch_days`), so the day ranges the
/// sync log hands it and the ones it plans are the same numbers.
fn day_number(date: NaiveDate) -> i64 {
    clock::pg_epoch_days(date)
}

/// Only called for days between two valid dates, so the conversion cannot fail.
fn date_of(day: i64) -> NaiveDate {
    clock::from_pg_epoch_days(day).expect("planned day lies between two valid dates")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, month, day).unwrap()
    }

    fn policy(window_days: u32, overlap_days: u32) -> Policy {
        Policy { window_days, overlap_days, force: false }
    }

    fn w(from: NaiveDate, to: NaiveDate, reason: Reason, will_run: bool) -> PlannedWindow {
        PlannedWindow { from, to, reason, will_run }
    }

    #[test]
    fn reasons_read_as_the_sql_column_says() {
        let all = [Reason::Backfill, Reason::Missing, Reason::Overlap, Reason::Today, Reason::Forced];
        let names: Vec<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["backfill", "missing", "overlap", "today", "forced"]);
    }

    #[test]
    fn new_store_is_backfilled_in_chunks_up_to_today() {
        let plan = plan_store(d(1, 1), &[], d(4, 10), policy(30, 1));
        assert_eq!(
            plan,
            vec![
                w(d(1, 1), d(1, 30), Reason::Backfill, true),
                w(d(1, 31), d(3, 1), Reason::Backfill, true),
                w(d(3, 2), d(3, 31), Reason::Backfill, true),
                w(d(4, 1), d(4, 10), Reason::Backfill, true),
            ]
        );
    }

    #[test]
    fn caught_up_store_only_refetches_its_overlap_through_today() {
        // Synced through yesterday: the last successful day and today, in one window.
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(3, 31)), (d(4, 1), d(4, 9))], d(4, 10), policy(90, 1));
        assert_eq!(plan, vec![w(d(4, 9), d(4, 10), Reason::Overlap, true)]);
        // Synced through today: today again, as the overlap.
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(4, 10))], d(4, 10), policy(90, 1));
        assert_eq!(plan, vec![w(d(4, 10), d(4, 10), Reason::Overlap, true)]);
    }

    #[test]
    fn jan_6_evening_success_re_runs_jan_6() {
        // docs/design.md#windows: a Jan-6 7pm success still misses late Jan-6 orders, so Jan 6 runs again.
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(1, 6))], d(1, 7), policy(90, 1));
        assert_eq!(plan, vec![w(d(1, 6), d(1, 7), Reason::Overlap, true)]);
    }

    #[test]
    fn longer_overlap_re_runs_the_last_k_days_and_then_backfills() {
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(1, 10))], d(1, 20), policy(5, 3));
        assert_eq!(
            plan,
            vec![
                w(d(1, 8), d(1, 12), Reason::Overlap, true),
                w(d(1, 13), d(1, 17), Reason::Backfill, true),
                w(d(1, 18), d(1, 20), Reason::Backfill, true),
            ]
        );
    }

    #[test]
    fn overlap_never_reaches_before_start_date() {
        let plan = plan_store(d(1, 5), &[(d(1, 5), d(1, 6))], d(1, 7), policy(90, 10));
        assert_eq!(plan, vec![w(d(1, 5), d(1, 7), Reason::Overlap, true)]);
    }

    #[test]
    fn zero_overlap_starts_the_day_after_the_last_success() {
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(1, 6))], d(1, 9), policy(90, 0));
        assert_eq!(plan, vec![w(d(1, 7), d(1, 9), Reason::Backfill, true)]);
    }

    #[test]
    fn zero_overlap_skips_todays_refresh_only_after_an_exact_today_success() {
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(1, 8)), (d(1, 9), d(1, 9))], d(1, 9), policy(90, 0));
        assert_eq!(plan, vec![w(d(1, 9), d(1, 9), Reason::Today, false)]);
    }

    #[test]
    fn zero_overlap_refetches_today_after_a_multi_day_window_that_succeeded_this_morning() {
        // Seed 003 §6: "a success window" is (from, to) exactly; Jan 1..Jan 9 covering today
        // is not a (today, today) success, so today is fetched once more.
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(1, 9))], d(1, 9), policy(90, 0));
        assert_eq!(plan, vec![w(d(1, 9), d(1, 9), Reason::Today, true)]);
    }

    #[test]
    fn hole_before_the_last_success_is_repaired_as_missing() {
        // A forced run succeeded through Mar 31 except Feb 10..Feb 20, which failed.
        let successes = [(d(1, 1), d(2, 9)), (d(2, 21), d(3, 31))];
        let plan = plan_store(d(1, 1), &successes, d(4, 1), policy(5, 1));
        assert_eq!(
            plan,
            vec![
                w(d(2, 10), d(2, 14), Reason::Missing, true),
                w(d(2, 15), d(2, 19), Reason::Missing, true),
                w(d(2, 20), d(2, 20), Reason::Missing, true),
                w(d(3, 31), d(4, 1), Reason::Overlap, true),
            ]
        );
    }

    #[test]
    fn days_before_the_first_success_are_missing() {
        // The store's start_date was moved earlier after it had been synced.
        let plan = plan_store(d(1, 1), &[(d(1, 10), d(1, 20))], d(1, 20), policy(90, 1));
        assert_eq!(
            plan,
            vec![w(d(1, 1), d(1, 9), Reason::Missing, true), w(d(1, 20), d(1, 20), Reason::Overlap, true)]
        );
    }

    #[test]
    fn force_replans_everything_from_start_date() {
        let successes = [(d(1, 1), d(1, 31))];
        let forced = Policy { window_days: 20, overlap_days: 1, force: true };
        assert_eq!(
            plan_store(d(1, 1), &successes, d(2, 3), forced),
            vec![w(d(1, 1), d(1, 20), Reason::Forced, true), w(d(1, 21), d(2, 3), Reason::Forced, true)]
        );
    }

    #[test]
    fn one_day_windows() {
        let plan = plan_store(d(1, 1), &[(d(1, 1), d(1, 2)), (d(1, 4), d(1, 4))], d(1, 6), policy(1, 1));
        assert_eq!(
            plan,
            vec![
                w(d(1, 3), d(1, 3), Reason::Missing, true),
                w(d(1, 4), d(1, 4), Reason::Overlap, true),
                w(d(1, 5), d(1, 5), Reason::Backfill, true),
                w(d(1, 6), d(1, 6), Reason::Backfill, true),
            ]
        );
    }

    #[test]
    fn store_starting_today_gets_one_window() {
        assert_eq!(plan_store(d(3, 1), &[], d(3, 1), policy(90, 1)), vec![w(d(3, 1), d(3, 1), Reason::Backfill, true)]);
    }

    #[test]
    fn store_starting_in_the_future_gets_nothing() {
        assert_eq!(plan_store(d(3, 2), &[], d(3, 1), policy(90, 1)), vec![]);
        let forced = Policy { window_days: 90, overlap_days: 1, force: true };
        assert_eq!(plan_store(d(3, 2), &[(d(3, 1), d(3, 5))], d(3, 1), forced), vec![]);
    }

    #[test]
    fn successes_outside_start_and_today_count_for_nothing() {
        // Before a start_date that was moved later, and after an as_of in the past.
        let successes = [(d(1, 1), d(1, 31)), (d(3, 5), d(3, 9))];
        let plan = plan_store(d(2, 1), &successes, d(3, 1), policy(90, 1));
        assert_eq!(plan, vec![w(d(2, 1), d(3, 1), Reason::Backfill, true)]);
    }

    #[test]
    fn merge_joins_overlapping_and_adjacent_ranges_and_clips() {
        assert_eq!(
            merge_day_ranges([(5, 7), (1, 2), (3, 3), (6, 9), (11, 12), (20, 30)], 2, 25),
            vec![(2, 3), (5, 9), (11, 12), (20, 25)]
        );
        assert_eq!(merge_day_ranges([(1, 10)], 11, 20), vec![]);
        assert_eq!(merge_day_ranges([(i64::MIN, i64::MAX)], 0, 3), vec![(0, 3)]);
    }

    // ---- properties over random histories ----

    const ORIGIN: i64 = 739_000; // 2024-04-..., any valid day works

    prop_compose! {
        fn history()(
            start in 0i64..60,
            span in 0i64..200,
            successes in prop::collection::vec((-20i64..260, 0i64..40), 0..12),
            window_days in 1u32..40,
            overlap_days in 0u32..15,
        ) -> (i64, i64, Vec<(i64, i64)>, u32, u32) {
            let successes = successes.into_iter().map(|(from, len)| (ORIGIN + from, ORIGIN + from + len)).collect();
            (ORIGIN + start, ORIGIN + start + span - 20, successes, window_days, overlap_days)
        }
    }

    fn run(start: i64, today: i64, successes: &[(i64, i64)], n: u32, k: u32, force: bool) -> Vec<PlannedWindow> {
        let successes: Vec<_> = successes.iter().map(|&(a, b)| (date_of(a), date_of(b))).collect();
        plan_store(date_of(start), &successes, date_of(today), Policy { window_days: n, overlap_days: k, force })
    }

    fn span(w: &PlannedWindow) -> (i64, i64) {
        (day_number(w.from), day_number(w.to))
    }

    proptest! {
        #[test]
        fn windows_are_sorted_disjoint_bounded_and_inside_the_store_span(
            (start, today, successes, n, k) in history(), force in any::<bool>()
        ) {
            let plan = run(start, today, &successes, n, k, force);
            if start > today {
                prop_assert!(plan.is_empty());
            }
            for window in &plan {
                let (from, to) = span(window);
                prop_assert!(start <= from && from <= to && to <= today, "{window:?}");
                prop_assert!(to - from < i64::from(n), "{window:?} longer than {n} days");
            }
            for pair in plan.windows(2) {
                prop_assert!(span(&pair[0]).1 < span(&pair[1]).0, "{pair:?}");
            }
        }

        #[test]
        fn every_uncovered_day_runs_exactly_once((start, today, successes, n, k) in history()) {
            let plan = run(start, today, &successes, n, k, false);
            for day in start..=today {
                let covered = successes.iter().any(|&(a, b)| a <= day && day <= b);
                let runs = plan.iter().filter(|w| w.will_run && span(w).0 <= day && day <= span(w).1).count();
                if !covered {
                    prop_assert_eq!(runs, 1, "day {} uncovered", day - ORIGIN);
                }
                prop_assert!(runs <= 1);
            }
        }

        #[test]
        fn last_k_successful_days_always_run((start, today, successes, n, k) in history()) {
            let plan = run(start, today, &successes, n, k, false);
            let clipped = merge_day_ranges(successes.iter().copied(), start, today);
            if let Some(&(_, last)) = clipped.last() {
                for day in max(start, last - i64::from(k) + 1)..=last {
                    prop_assert!(
                        plan.iter().any(|w| w.will_run && span(w).0 <= day && day <= span(w).1),
                        "overlap day {} not run", day - ORIGIN
                    );
                }
            }
        }

        #[test]
        fn covered_days_outside_the_overlap_are_left_alone((start, today, successes, n, k) in history()) {
            let plan = run(start, today, &successes, n, k, false);
            let clipped = merge_day_ranges(successes.iter().copied(), start, today);
            if let Some(&(_, last)) = clipped.last() {
                let overlap_from = if k == 0 { last + 1 } else { last - i64::from(k) + 1 };
                // The today refresh is the seed's exception: it re-runs a covered today.
                for window in plan.iter().filter(|w| w.will_run && w.reason != Reason::Today) {
                    let (from, to) = span(window);
                    for day in from..=to.min(overlap_from - 1) {
                        prop_assert!(
                            !clipped.iter().any(|&(a, b)| a <= day && day <= b),
                            "covered day {} planned in {window:?}", day - ORIGIN
                        );
                    }
                }
            }
        }

        #[test]
        fn today_refresh_runs_unless_today_today_succeeded((start, today, successes, n) in history().prop_map(|(s, t, w, n, _)| (s, t, w, n))) {
            let plan = run(start, today, &successes, n, 0, false);
            if start <= today {
                let exact = successes.contains(&(today, today));
                let runs_today = plan.iter().any(|w| w.will_run && span(w).0 <= today && today <= span(w).1);
                prop_assert_eq!(runs_today, !exact, "{:?}", plan);
            }
        }

        #[test]
        fn today_is_always_planned((start, today, successes, n, k) in history()) {
            let plan = run(start, today, &successes, n, k, false);
            if start <= today {
                prop_assert!(plan.last().is_some_and(|w| span(w).1 == today));
            }
        }

        #[test]
        fn force_covers_every_day_exactly_once((start, today, successes, n, k) in history()) {
            let plan = run(start, today, &successes, n, k, true);
            prop_assert!(plan.iter().all(|w| w.will_run && w.reason == Reason::Forced));
            for day in start..=today {
                let runs = plan.iter().filter(|w| span(w).0 <= day && day <= span(w).1).count();
                prop_assert_eq!(runs, 1);
            }
        }
    }
}
