//! `kmutex_recursion`: one thread locks a `KMutex` twice (a KMUTEX is recursive for its owner),
//! then releases twice; depth 2 is reported for the inner acquisition.

use vmtest_event_protocol::Op;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::catalogue::m;
use crate::irql;
use crate::mutexes::{self, TestMutex};
use crate::report::{mutex_error, Ctx};

const NAME: &str = m::KM;

/// Runs the scenario.
pub fn run(ctx: Ctx<'static>) -> Ending {
    let kind = <KMutex<u32> as TestMutex<u32>>::KIND;
    let Some(mutex) = mutexes::create::<KMutex<u32>, u32>(ctx, NAME, 0) else {
        return Ending::error("KMutex::new failed");
    };

    let irql = irql::current();
    ctx.acquire(NAME, kind, irql);
    let outer = match mutex.lock() {
        Ok(guard) => guard,
        Err(error) => {
            ctx.call(Op::Lock, Some((NAME, kind)), irql, mutex_error(&error));
            return Ending::error("the first lock failed");
        }
    };
    ctx.acquired(NAME, kind, 1);

    // The owner asks again: a KMUTEX lets it in at once, one level deeper.
    let irql = irql::current();
    ctx.acquire(NAME, kind, irql);
    match mutex.lock() {
        Ok(inner) => {
            ctx.acquired(NAME, kind, 2);
            ctx.release(NAME, kind, 2);
            drop(inner);
        }
        Err(error) => ctx.call(Op::Lock, Some((NAME, kind)), irql, mutex_error(&error)),
    }

    ctx.release(NAME, kind, 1);
    drop(outer);
    Ending::done()
}
