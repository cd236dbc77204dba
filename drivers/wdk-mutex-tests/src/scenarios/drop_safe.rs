//! `drop_safe_then_drop`: lock, `drop_safe` (the release), then let the guard leave scope, whose
//! `Drop` releases again because `drop_safe` takes `&mut self` and does not consume the guard
//! (wdk-mutex 1.3.2, `KMutexGuard::drop_safe`, `FastMutexGuard::drop_safe`).
//!
//! What the scenario asserts (`drivers/scenarios.json`): `drop_safe` releases the mutex (`release`
//! while still held, then `call op=drop_safe r=Ok`). The guard's second release is the crate's
//! double release: the thread no longer holds the mutex, so it is no `release` event; it is
//! reported as `call op=drop` once it returned, i.e. only if the system survived it. Both outcomes
//! pass: surviving it, and a bugcheck that stops it (the catalogue allows 0x7E and relatives:
//! `KeReleaseMutex` by a thread that does not own the mutex raises `STATUS_MUTANT_NOT_OWNED`).
//!
//! `FastMutex` runs first, then `KMutex`, whose second `KeReleaseMutex` is the likelier to stop the
//! system. The catalogue marks the scenario `last`: it runs after every other one.

use alloc::string::String;

use vmtest_event_protocol::{CallResult, Op};
use wdk_mutex::fast_mutex::FastMutex;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::catalogue::m;
use crate::irql;
use crate::mutexes::{self, TestMutex};
use crate::report::{mutex_error, mutex_result, Ctx};

/// Runs the scenario.
pub fn run(ctx: Ctx<'static>) -> Ending {
    let fast = twice::<FastMutex<u32>>(ctx, m::FM);
    let kernel = twice::<KMutex<u32>>(ctx, m::KM);
    if fast && kernel {
        Ending::done_with(String::from(
            "the system survived both second releases (fast_mutex, then kmutex)",
        ))
    } else {
        Ending::error("creating or locking a mutex failed")
    }
}

/// One mutex: lock, `drop_safe`, drop the guard.
fn twice<M: TestMutex<u32>>(ctx: Ctx<'_>, m: &str) -> bool {
    let kind = M::KIND;
    let Some(mutex) = mutexes::create::<M, u32>(ctx, m, 0) else {
        return false;
    };
    let irql = irql::current();
    ctx.acquire(m, kind, irql);
    let mut guard = match mutex.guard() {
        Ok(guard) => guard,
        Err(error) => {
            ctx.call(Op::Lock, Some((m, kind)), irql, mutex_error(&error));
            return false;
        }
    };
    ctx.acquired(m, kind, 1);

    ctx.release(m, kind, 1);
    let irql = irql::current();
    let released = M::release_safe(&mut guard);
    ctx.call(Op::DropSafe, Some((m, kind)), irql, mutex_result(&released));

    // The guard leaves scope now: its Drop releases the mutex again if drop_safe released it. No
    // `release` event: this thread no longer holds the mutex.
    let irql = irql::current();
    drop(guard);
    ctx.call(Op::Drop, Some((m, kind)), irql, CallResult::Ok);
    true
}
