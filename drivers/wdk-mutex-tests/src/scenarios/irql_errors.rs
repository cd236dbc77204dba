//! `irql_errors`: the crate's IRQL checks, in the order and with the names of the catalogue's step
//! table (`catalogue::IRQL_ERRORS`, from `drivers/scenarios.json`), each call reported as `call`
//! with the IRQL observed at the call:
//!
//! | step | call | IRQL | expected |
//! | --- | --- | --- | --- |
//! | 1, 2 | `KMutex::lock`, `FastMutex::lock` | `DISPATCH_LEVEL` | `IrqlTooHigh` (no wait, no bugcheck) |
//! | 3 | `FastMutex::lock` | `PASSIVE_LEVEL` | `Ok`: holding it is `APC_LEVEL` |
//! | 4 | `KMutex::lock` | `APC_LEVEL` | `Ok` |
//! | 5, 6 | `FastMutexGuard::drop_safe` | `DISPATCH_LEVEL`, then `APC_LEVEL` | `IrqlTooHigh`, then `Ok` |
//! | 7, 8 | `FastMutex::new` | `DISPATCH_LEVEL`, then `DISPATCH_LEVEL + 1` | `Ok`, then `IrqlTooHigh` |
//! | 9 | `KMutex::lock` | `PASSIVE_LEVEL` | `Ok` |
//! | 10, 11 | `KMutexGuard::drop_safe` | `DISPATCH_LEVEL + 1`, then `PASSIVE_LEVEL` | `IrqlTooHigh`, then `Ok` |
//!
//! A granted lock is followed by `acquired`, a release by `release` before it. Nothing is printed
//! while the IRQL is raised: results are recorded, the IRQL lowered, then the events printed. A
//! guard whose `drop_safe` released the mutex is forgotten, not dropped: its `Drop` would release a
//! second time (that is `drop_safe_then_drop`'s question, not this scenario's).

use core::mem;

use vmtest_event_protocol::{CallResult, MutexKind};
use wdk_mutex::fast_mutex::FastMutex;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::catalogue::{m, Step, IRQL_ERRORS};
use crate::irql::{self, RaisedIrql};
use crate::mutexes::{self, TestMutex};
use crate::report::{mutex_error, mutex_result, note, Ctx};

/// Runs the scenario.
pub fn run(ctx: Ctx<'static>) -> Ending {
    let Some(km) = mutexes::create::<KMutex<u32>, u32>(ctx, m::KM, 0) else {
        return Ending::error("KMutex::new failed");
    };
    let Some(fm) = mutexes::create::<FastMutex<u32>, u32>(ctx, m::FM, 0) else {
        return Ending::error("FastMutex::new failed");
    };
    let [lock_km_dispatch, lock_fm_dispatch, lock_fm, lock_km_apc, fm_refused, fm_released, new_dispatch, new_above, lock_km, km_refused, km_released] =
        &IRQL_ERRORS;

    lock_raised(ctx, lock_km_dispatch, &km);
    lock_raised(ctx, lock_fm_dispatch, &fm);
    if let Some(held) = lock_step(ctx, lock_fm, &fm) {
        if let Some(guard) = lock_step(ctx, lock_km_apc, &km) {
            let (name, kind) = target(lock_km_apc);
            ctx.release(name, kind, 1);
            drop(guard);
        }
        drop_safe_steps::<FastMutex<u32>>(ctx, held, fm_refused, fm_released);
    }
    new_at(ctx, new_dispatch);
    new_at(ctx, new_above);
    if let Some(held) = lock_step(ctx, lock_km, &km) {
        drop_safe_steps::<KMutex<u32>>(ctx, held, km_refused, km_released);
    }
    Ending::done()
}

/// The mutex a step names (every lock and `drop_safe` step names one).
fn target(step: &Step) -> (&'static str, MutexKind) {
    step.m.unwrap_or(("", MutexKind::KMutex))
}

/// Locks and, should that succeed (a broken contract at this IRQL), unlocks at once. Prints nothing.
fn try_lock<M: TestMutex<T>, T>(mutex: &M) -> CallResult {
    match mutex.guard() {
        Ok(guard) => {
            drop(guard);
            CallResult::Ok
        }
        Err(error) => mutex_error(&error),
    }
}

/// `lock` at the step's raised IRQL: must return `IrqlTooHigh` instead of waiting.
fn lock_raised<M: TestMutex<u32>>(ctx: Ctx<'_>, step: &Step, mutex: &M) {
    // SAFETY: until `raised` is dropped only KeGetCurrentIrql and the crate's lock (which must
    // refuse at this IRQL, and would release at once if it did not) run; nothing is printed.
    let Some(raised) = (unsafe { RaisedIrql::raise(step.irql) }) else {
        note(format_args!("irql_errors: cannot raise to IRQL {}", step.irql));
        return;
    };
    let irql = irql::current();
    let result = try_lock(mutex);
    drop(raised);
    ctx.call(step.op, step.m, irql, result);
}

/// `lock` at the current IRQL: `call`, then `acquired` when granted; the guard, if any.
fn lock_step<'a, M: TestMutex<u32> + 'a>(
    ctx: Ctx<'_>,
    step: &Step,
    mutex: &'a M,
) -> Option<M::Guard<'a>> {
    let irql = irql::current();
    match mutex.guard() {
        Ok(guard) => {
            ctx.call(step.op, step.m, irql, CallResult::Ok);
            let (name, kind) = target(step);
            ctx.acquired(name, kind, 1);
            Some(guard)
        }
        Err(error) => {
            ctx.call(step.op, step.m, irql, mutex_error(&error));
            None
        }
    }
}

/// `FastMutex::new` at the step's IRQL: allowed up to `DISPATCH_LEVEL`, `IrqlTooHigh` above.
fn new_at(ctx: Ctx<'_>, step: &Step) {
    // SAFETY: until `raised` is dropped only KeGetCurrentIrql and FastMutex::new run. Above
    // DISPATCH_LEVEL, `new` must return before allocating; a mutex it did create is freed only
    // after the IRQL is lowered again.
    let Some(raised) = (unsafe { RaisedIrql::raise(step.irql) }) else {
        note(format_args!("irql_errors: cannot raise to IRQL {}", step.irql));
        return;
    };
    let irql = irql::current();
    let created = FastMutex::new(0u32);
    drop(raised);
    ctx.call(step.op, step.m, irql, mutex_result(&created));
    drop(created);
}

/// `drop_safe` on a held guard at the raised IRQL of `refused` (it must refuse), then at the
/// current IRQL as `released` (it must release, after a `release` event).
fn drop_safe_steps<'a, M: TestMutex<u32> + 'a>(
    ctx: Ctx<'_>,
    mut held: M::Guard<'a>,
    refused: &Step,
    released: &Step,
) {
    let (name, kind) = target(released);
    // SAFETY: until `raised` is dropped only KeGetCurrentIrql and drop_safe (which must refuse at
    // this IRQL) run; the guard outlives `raised` and is released after the IRQL is lowered.
    let Some(raised) = (unsafe { RaisedIrql::raise(refused.irql) }) else {
        note(format_args!("irql_errors: cannot raise to IRQL {}", refused.irql));
        ctx.release(name, kind, 1);
        drop(held);
        return;
    };
    let at = irql::current();
    let result = M::release_safe(&mut held);
    drop(raised);
    ctx.call(refused.op, refused.m, at, mutex_result(&result));
    if result.is_ok() {
        // drop_safe released at an IRQL it should have refused (the call above is the finding):
        // dropping the guard would release a second time.
        mem::forget(held);
        return;
    }

    ctx.release(name, kind, 1);
    let irql = irql::current();
    let result = M::release_safe(&mut held);
    ctx.call(released.op, released.m, irql, mutex_result(&result));
    if result.is_ok() {
        // Released; the guard is still alive and its Drop would release again.
        mem::forget(held);
    } else {
        drop(held);
    }
}
