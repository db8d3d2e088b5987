//! The extension's PostgreSQL shared memory: the pacing table of `fetch::pace`
//! (docs/design.md#limits) and the dispatch epoch of `queue::claim` (docs/design.md#caps).
//! Only there when the library is preloaded (it always is for its launcher); everything else
//! works without it.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::fetch::pace::SLOTS;

/// `SLOTS` (pipeline id, theoretical arrival time) pairs, zeroed at every server start.
static PACE_TABLE: PgAtomic<[AtomicU64; 2 * SLOTS]> = unsafe { PgAtomic::new(c"orders_sync pace table") };
/// Set by the postmaster when it sets up `PACE_TABLE`, before it starts any backend, which
/// inherits both. `PgAtomic::get` panics when there is no table; callers ask this first.
static PACE_TABLE_READY: AtomicBool = AtomicBool::new(false);

/// How many times a slot was taken by counting the running jobs (or by `sync_window`, which
/// does not count): a job worker hands its slot on only while this has not moved since before
/// its window ended. Zeroed at every server start.
static DISPATCH_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"orders_sync dispatch epoch") };
static DISPATCH_EPOCH_READY: AtomicBool = AtomicBool::new(false);

/// Asks for the shared memory; only while shared_preload_libraries are loaded (later there is
/// none to be had).
// pg_shmem_init! tests pgrx's pgNN features, of which this crate declares only pg15.
#[allow(unexpected_cfgs)]
pub fn init() {
    // SAFETY: a plain read of a flag PostgreSQL sets while preloading libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pg_shmem_init!(
        PACE_TABLE = {
            PACE_TABLE_READY.store(true, Ordering::Release);
            std::array::from_fn(|_| AtomicU64::new(0))
        }
    );
    pg_shmem_init!(
        DISPATCH_EPOCH = {
            DISPATCH_EPOCH_READY.store(true, Ordering::Release);
            AtomicU64::new(0)
        }
    );
}

/// The cluster's pacing table, `None` when the library was not preloaded. Plain memory:
/// callable from any thread.
pub fn pace_table() -> Option<&'static [AtomicU64]> {
    PACE_TABLE_READY.load(Ordering::Acquire).then(|| PACE_TABLE.get().as_slice())
}

/// The cluster's dispatch epoch, `None` when the library was not preloaded.
pub fn dispatch_epoch() -> Option<&'static AtomicU64> {
    DISPATCH_EPOCH_READY.load(Ordering::Acquire).then(|| DISPATCH_EPOCH.get())
}
