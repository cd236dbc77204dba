//! `kmutex_contention`, `fast_mutex_contention`, `grt_contention`: N threads x M increments of one
//! counter under one mutex; every acquire, acquired, release logged (seq taken while held), each
//! thread's `thread-end`, then the final `counter` (expected N x M).

use alloc::sync::Arc;

use vmtest_event_protocol::{MutexKind, Op};
use wdk_mutex::fast_mutex::FastMutex;
use wdk_mutex::grt::Grt;
use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::catalogue::m;
use crate::irql;
use crate::mutexes::{self, TestMutex};
use crate::params::Config;
use crate::report::{grt_error, grt_result, mutex_error, Ctx};
use crate::thread::run_on_threads;

/// The counter's name in the events.
const COUNTER: &str = m::COUNTER;
/// The counter's label in the Grt: its name.
const GRT_LABEL: &str = m::COUNTER;

/// `kmutex_contention`.
pub fn kmutex(ctx: Ctx<'static>, config: &Config) -> Ending {
    owned::<KMutex<u64>>(ctx, config)
}

/// `fast_mutex_contention`.
pub fn fast_mutex(ctx: Ctx<'static>, config: &Config) -> Ending {
    owned::<FastMutex<u64>>(ctx, config)
}

/// The counter in a mutex this scenario owns, shared with the threads through an `Arc`.
fn owned<M>(ctx: Ctx<'static>, config: &Config) -> Ending
where
    M: TestMutex<u64> + Send + Sync + 'static,
{
    let Some(mutex) = mutexes::create::<M, u64>(ctx, COUNTER, 0) else {
        return Ending::error("creating the mutex failed");
    };
    let mutex = Arc::new(mutex);
    let shared = Arc::clone(&mutex);
    let iterations = config.iterations;
    let ran = run_on_threads(config.threads, move |t| {
        hammer(ctx.thread(t), &*shared, iterations);
    });
    match ran {
        Ok(()) => final_count(ctx, &*mutex, config),
        Err(status) => Ending::no_thread(status),
    }
}

/// `grt_contention`: the counter is a `KMutex` registered in the Grt, looked up by each thread.
pub fn grt(ctx: Ctx<'static>, config: &Config) -> Ending {
    let irql = irql::current();
    let init = Grt::init();
    ctx.call(Op::GrtInit, None, irql, grt_result(&init));
    if init.is_err() {
        return Ending::error("Grt::init failed (is a Grt left over from an earlier scenario?)");
    }

    let ending = count_in_grt(ctx, config);

    let irql = irql::current();
    // SAFETY: every thread that took a reference from the Grt has been joined and
    // `count_in_grt` has returned, so no reference into the Grt outlives this call.
    let destroyed = unsafe { Grt::destroy() };
    ctx.call(Op::GrtDestroy, None, irql, grt_result(&destroyed));
    ending
}

/// Registers the counter, runs the threads, reports the final count (the Grt is initialised).
fn count_in_grt(ctx: Ctx<'static>, config: &Config) -> Ending {
    let kind = MutexKind::KMutex;
    let irql = irql::current();
    let registered = Grt::register_kmutex(GRT_LABEL, 0u64);
    let r = grt_result(&registered);
    ctx.call(Op::GrtRegister, Some((COUNTER, kind)), irql, r);
    if registered.is_err() {
        return Ending::error("registering the counter in the Grt failed");
    }
    ctx.mutex(COUNTER, kind);

    let iterations = config.iterations;
    let ran = run_on_threads(config.threads, move |t| {
        grt_thread(ctx.thread(t), iterations);
    });
    if let Err(status) = ran {
        return Ending::no_thread(status);
    }

    let irql = irql::current();
    match Grt::get_kmutex::<u64>(GRT_LABEL) {
        Ok(mutex) => final_count(ctx, mutex, config),
        Err(error) => {
            ctx.call(Op::GrtGet, Some((COUNTER, kind)), irql, grt_error(&error));
            Ending::error("the counter is gone from the Grt")
        }
    }
}

/// One thread of `grt_contention`: look the counter up, then increment it.
fn grt_thread(ctx: Ctx<'static>, iterations: u32) {
    let kind = MutexKind::KMutex;
    let irql = irql::current();
    let found = Grt::get_kmutex::<u64>(GRT_LABEL);
    ctx.call(Op::GrtGet, Some((COUNTER, kind)), irql, grt_result(&found));
    match found {
        Ok(mutex) => hammer(ctx, mutex, iterations),
        Err(_) => ctx.thread_end(0),
    }
}

/// One thread's loop: `iterations` logged increments, then `thread-end`. A failed `lock` (already
/// reported) ends the loop early.
fn hammer<M: TestMutex<u64>>(ctx: Ctx<'_>, mutex: &M, iterations: u32) {
    let mut completed: u64 = 0;
    for _ in 0..iterations {
        let incremented = mutexes::locked(ctx, COUNTER, mutex, |counter: &mut u64| {
            *counter = counter.wrapping_add(1);
        });
        if incremented.is_err() {
            break;
        }
        completed += 1;
    }
    ctx.thread_end(completed);
}

/// `counter` with the final value (expected threads x iterations).
fn final_count<M: TestMutex<u64>>(ctx: Ctx<'_>, mutex: &M, config: &Config) -> Ending {
    let expected = u64::from(config.threads) * u64::from(config.iterations);
    let irql = irql::current();
    match mutexes::peek(mutex) {
        Ok(value) => {
            ctx.counter(COUNTER, value, expected);
            Ending::done()
        }
        Err(error) => {
            ctx.call(
                Op::Lock,
                Some((COUNTER, M::KIND)),
                irql,
                mutex_error(&error),
            );
            Ending::error("reading the final counter failed")
        }
    }
}
