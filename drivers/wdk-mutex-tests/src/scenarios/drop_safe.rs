//! `drop_safe_then_drop`: lock, `drop_safe` (a release), then let the guard leave scope, whose
//! `Drop` releases again because `drop_safe` does not consume the guard. Every step is reported
//! as it happens, so whatever Windows does on the second release (nothing visible, an exception,
//! a bugcheck) is what vmtest finds:
//!
//! `acquire`, `acquired`, `release` (about to call `drop_safe`), `call op=drop_safe`, `release`
//! (the guard is about to be dropped), `call op=drop` (only if the system survived).
//!
//! `FastMutex` runs first, then `KMutex`, whose second `KeReleaseMutex` by a thread that no longer
//! owns the mutex is the likelier to stop the system. Run by default, last.

use vmtest_event_protocol::{CallResult, Op};
use wdk_mutex::fast_mutex::FastMutex;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::irql;
use crate::mutexes::{self, TestMutex};
use crate::report::{mutex_error, mutex_result, Ctx};

/// Runs the scenario.
pub fn run(ctx: Ctx<'static>) -> Ending {
    let fast = twice::<FastMutex<u32>>(ctx, "fm");
    let kernel = twice::<KMutex<u32>>(ctx, "km");
    if fast && kernel {
        Ending::done()
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

    // The guard leaves scope now: its Drop releases the mutex (again, if drop_safe released it).
    ctx.release(m, kind, 1);
    let irql = irql::current();
    drop(guard);
    ctx.call(Op::Drop, Some((m, kind)), irql, CallResult::Ok);
    true
}
