//! The extension's PostgreSQL shared memory: the pacing table of `fetch::pace`
//! (docs/design.md#limits). Only there when the library is preloaded (it always is for its
//! launcher); everything else works without it.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::fetch::pace::SLOTS;

/// `SLOTS` (pipeline id, theoretical arrival time) pairs, zeroed at every server start.
static PACE_TABLE: PgAtomic<[AtomicU64; 2 * SLOTS]> = unsafe { PgAtomic::new(c"orders_sync pace table") };
/// Set by the postmaster when it sets up `PACE_TABLE`, before it starts any backend, which
/// inherits both. `PgAtomic::get` panics when there is no table; callers ask this first.
static PACE_TABLE_READY: AtomicBool = AtomicBool::new(false);

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
}

/// The cluster's pacing table, `None` when the library was not preloaded. Plain memory:
/// callable from any thread.
pub fn pace_table() -> Option<&'static [AtomicU64]> {
    PACE_TABLE_READY.load(Ordering::Acquire).then(|| PACE_TABLE.get().as_slice())
}
