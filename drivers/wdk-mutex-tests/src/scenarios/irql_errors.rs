//! `irql_errors`: the crate's IRQL checks, each call reported as `call` with the IRQL observed at
//! the call:
//!
//! | call | IRQL | expected |
//! | --- | --- | --- |
//! | `KMutex::lock`, `FastMutex::lock` | `DISPATCH_LEVEL` | `IrqlTooHigh` (no wait, no bugcheck) |
//! | `KMutex::lock` | `APC_LEVEL` | `Ok` |
//! | `FastMutex::new` | `DISPATCH_LEVEL` | `Ok` |
//! | `FastMutex::new` | `DISPATCH_LEVEL + 1`, `HIGH_LEVEL` | `IrqlTooHigh` |
//! | `KMutexGuard::drop_safe` | `DISPATCH_LEVEL + 1` | `IrqlTooHigh` |
//! | `FastMutexGuard::drop_safe` | `DISPATCH_LEVEL` (not the `APC_LEVEL` it requires) | `IrqlTooHigh` |
//!
//! Nothing is printed while the IRQL is raised: results are recorded, the IRQL lowered, then the
//! events printed. If a call that must fail succeeds, the driver undoes it without a second
//! release.

use core::mem;

use vmtest_event_protocol::{CallResult, MutexKind, Op};
use wdk_mutex::fast_mutex::FastMutex;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::irql::{self, RaisedIrql};
use crate::mutexes::{self, TestMutex};
use crate::report::{mutex_error, mutex_result, note, Ctx};

const KM: &str = "km";
const FM: &str = "fm";
/// The name reported for the `FastMutex::new` calls made at raised IRQL.
const FM_NEW: &str = "fm_new";

/// Runs the scenario.
pub fn run(ctx: Ctx<'static>) -> Ending {
    let Some(km) = mutexes::create::<KMutex<u32>, u32>(ctx, KM, 0) else {
        return Ending::error("KMutex::new failed");
    };
    let Some(fm) = mutexes::create::<FastMutex<u32>, u32>(ctx, FM, 0) else {
        return Ending::error("FastMutex::new failed");
    };

    lock_at_dispatch(ctx, &km, &fm);
    kmutex_lock_at_apc(ctx, &km);
    for level in [irql::DISPATCH, irql::DISPATCH + 1, irql::HIGH] {
        fast_mutex_new_at(ctx, level);
    }
    drop_safe_at(ctx, KM, &km, irql::DISPATCH + 1);
    drop_safe_at(ctx, FM, &fm, irql::DISPATCH);
    Ending::done()
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

/// `lock` on both kinds at `DISPATCH_LEVEL`: must return `IrqlTooHigh` instead of waiting.
fn lock_at_dispatch(ctx: Ctx<'_>, km: &KMutex<u32>, fm: &FastMutex<u32>) {
    // SAFETY: until `raised` is dropped only KeGetCurrentIrql and the crate's lock (which must
    // refuse at this IRQL, and would release at once if it did not) run; nothing is printed.
    let Some(raised) = (unsafe { RaisedIrql::raise(irql::DISPATCH) }) else {
        note(format_args!("irql_errors: cannot raise to DISPATCH_LEVEL"));
        return;
    };
    let km_irql = irql::current();
    let km_result = try_lock(km);
    let fm_irql = irql::current();
    let fm_result = try_lock(fm);
    drop(raised);
    ctx.call(Op::Lock, Some((KM, MutexKind::KMutex)), km_irql, km_result);
    ctx.call(
        Op::Lock,
        Some((FM, MutexKind::FastMutex)),
        fm_irql,
        fm_result,
    );
}

/// `KMutex::lock` at `APC_LEVEL`: allowed, so a full logged critical section.
fn kmutex_lock_at_apc(ctx: Ctx<'_>, km: &KMutex<u32>) {
    let kind = MutexKind::KMutex;
    // SAFETY: at APC_LEVEL the thread may wait on a dispatcher object and print; the guard is
    // dropped before `raised`.
    let Some(raised) = (unsafe { RaisedIrql::raise(irql::APC) }) else {
        note(format_args!("irql_errors: cannot raise to APC_LEVEL"));
        return;
    };
    let irql = irql::current();
    ctx.acquire(KM, kind, irql);
    match km.lock() {
        Ok(guard) => {
            ctx.call(Op::Lock, Some((KM, kind)), irql, CallResult::Ok);
            ctx.acquired(KM, kind, 1);
            ctx.release(KM, kind, 1);
            drop(guard);
        }
        Err(error) => ctx.call(Op::Lock, Some((KM, kind)), irql, mutex_error(&error)),
    }
    drop(raised);
}

/// `FastMutex::new` at `level`: allowed up to `DISPATCH_LEVEL`, `IrqlTooHigh` above.
fn fast_mutex_new_at(ctx: Ctx<'_>, level: u8) {
    // SAFETY: until `raised` is dropped only KeGetCurrentIrql and FastMutex::new run. Above
    // DISPATCH_LEVEL, `new` must return before allocating; a mutex it did create is freed only
    // after the IRQL is lowered again.
    let Some(raised) = (unsafe { RaisedIrql::raise(level) }) else {
        note(format_args!("irql_errors: cannot raise to IRQL {level}"));
        return;
    };
    let irql = irql::current();
    let created = FastMutex::new(0u32);
    drop(raised);
    ctx.call(
        Op::New,
        Some((FM_NEW, MutexKind::FastMutex)),
        irql,
        mutex_result(&created),
    );
    drop(created);
}

/// Locks `mutex` at the current IRQL, raises to `level` and calls `drop_safe` there (it must
/// refuse), lowers, then releases normally.
fn drop_safe_at<M: TestMutex<u32>>(ctx: Ctx<'_>, m: &str, mutex: &M, level: u8) {
    let kind = M::KIND;
    let irql = irql::current();
    ctx.acquire(m, kind, irql);
    let mut guard = match mutex.guard() {
        Ok(guard) => guard,
        Err(error) => {
            ctx.call(Op::Lock, Some((m, kind)), irql, mutex_error(&error));
            return;
        }
    };
    ctx.acquired(m, kind, 1);

    // SAFETY: until `raised` is dropped only KeGetCurrentIrql and drop_safe (which must refuse at
    // this IRQL) run; the guard outlives `raised` and is dropped after the IRQL is lowered.
    let Some(raised) = (unsafe { RaisedIrql::raise(level) }) else {
        note(format_args!("irql_errors: cannot raise to IRQL {level}"));
        ctx.release(m, kind, 1);
        drop(guard);
        return;
    };
    let at = irql::current();
    let released = M::release_safe(&mut guard);
    drop(raised);
    ctx.call(Op::DropSafe, Some((m, kind)), at, mutex_result(&released));

    if released.is_ok() {
        // drop_safe released at an IRQL it should have refused. Dropping the guard would release
        // a second time: forget it instead (the call above is the finding).
        mem::forget(guard);
    } else {
        ctx.release(m, kind, 1);
        drop(guard);
    }
}
