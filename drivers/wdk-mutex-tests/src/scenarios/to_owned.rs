//! `to_owned`: `to_owned` and `to_owned_box` on both kinds (`km`, `km_box`, `fm`, `fm_box`, as the
//! catalogue names them). Each mutex holds a value that counts its drops, made with 7; the scenario
//! adds 35 under the lock, takes the value out, and reports the value found (`counter m=<mutex>`,
//! expected 42) and how often the value was dropped once the caller let it go
//! (`counter m=<mutex>_drops`, expected 1: wdk-mutex before 1.3.2 dropped it twice).

use core::sync::atomic::{AtomicU64, Ordering};

use vmtest_event_protocol::{CallResult, Op};
use wdk_mutex::fast_mutex::FastMutex;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::catalogue::m;
use crate::irql;
use crate::mutexes::{self, TestMutex};
use crate::report::Ctx;

/// The value a mutex is made with.
const INITIAL: u64 = 7;
/// What is added under the lock.
const ADDED: u64 = 35;
/// The value expected back.
const VALUE: u64 = INITIAL + ADDED;

/// Drops of `Tracked` values so far.
static DROPS: AtomicU64 = AtomicU64::new(0);

/// A value that counts its drops.
struct Tracked {
    value: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs the scenario.
pub fn run(ctx: Ctx<'static>) -> Ending {
    let checks = [
        check::<KMutex<Tracked>>(ctx, m::KM, m::KM_DROPS, Op::ToOwned),
        check::<KMutex<Tracked>>(ctx, m::KM_BOX, m::KM_BOX_DROPS, Op::ToOwnedBox),
        check::<FastMutex<Tracked>>(ctx, m::FM, m::FM_DROPS, Op::ToOwned),
        check::<FastMutex<Tracked>>(ctx, m::FM_BOX, m::FM_BOX_DROPS, Op::ToOwnedBox),
    ];
    if checks.iter().all(|&ran| ran) {
        Ending::done()
    } else {
        Ending::error("creating or locking a mutex failed")
    }
}

/// One mutex: create with `INITIAL`, add `ADDED` under the lock, take the value out with `op`,
/// report.
fn check<M: TestMutex<Tracked>>(ctx: Ctx<'_>, m: &str, drops: &str, op: Op) -> bool {
    let Some(mutex) = mutexes::create::<M, Tracked>(ctx, m, Tracked { value: INITIAL }) else {
        return false;
    };
    let set = mutexes::locked(ctx, m, &mutex, |tracked: &mut Tracked| {
        tracked.value += ADDED;
    });
    if set.is_err() {
        return false;
    }

    let before = DROPS.load(Ordering::SeqCst);
    let irql = irql::current();
    let value = if op == Op::ToOwnedBox {
        // SAFETY: `mutex` is owned here; no guard or reference to it is alive, and it is not
        // used after this call.
        let owned = unsafe { mutex.take_box() };
        owned.value
    } else {
        // SAFETY: as above.
        let owned = unsafe { mutex.take() };
        owned.value
    };
    // The taken value has been dropped (end of the block above): exactly one drop is right.
    let dropped = DROPS.load(Ordering::SeqCst) - before;
    ctx.call(op, Some((m, M::KIND)), irql, CallResult::Ok);
    ctx.counter(m, value, VALUE);
    ctx.counter(drops, dropped, 1);
    true
}
