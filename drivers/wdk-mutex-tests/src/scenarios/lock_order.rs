//! `lock_order_consistent`: N threads take `a` then `b`, always in that order (no cycle).
//! `neg_lock_inversion` (negative control): one thread takes `a` then `b`, another, later, `b` then
//! `a`; they are spaced in time so they cannot deadlock, but the lock-order graph has a cycle that
//! vmtest must flag.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

use wdk_mutex::kmutex::KMutex;

use super::Ending;
use crate::catalogue::{self, m};
use crate::mutexes;
use crate::params::Config;
use crate::report::Ctx;
use crate::thread::{run_on_threads, sleep_ms};

/// How long the second thread of `neg_lock_inversion` waits before it starts (it also waits for
/// the first thread to finish, so the two never overlap): the catalogue's `delay_ms`.
pub const INVERSION_DELAY_MS: u32 = catalogue::DELAY_MS;

/// The two mutexes, both `KMutex`es counting how often they were taken.
struct Pair {
    a: KMutex<u64>,
    b: KMutex<u64>,
}

fn create_pair(ctx: Ctx<'static>) -> Option<Arc<Pair>> {
    let a = mutexes::create::<KMutex<u64>, u64>(ctx, m::A, 0)?;
    let b = mutexes::create::<KMutex<u64>, u64>(ctx, m::B, 0)?;
    Some(Arc::new(Pair { a, b }))
}

/// Takes `first` then `second`, releases in reverse order; false if a lock failed (reported).
fn nested(ctx: Ctx<'_>, first: (&str, &KMutex<u64>), second: (&str, &KMutex<u64>)) -> bool {
    mutexes::locked(ctx, first.0, first.1, |outer: &mut u64| {
        *outer += 1;
        mutexes::locked(ctx, second.0, second.1, |inner: &mut u64| *inner += 1).is_ok()
    })
    .unwrap_or(false)
}

/// `lock_order_consistent`.
pub fn consistent(ctx: Ctx<'static>, config: &Config) -> Ending {
    let Some(pair) = create_pair(ctx) else {
        return Ending::error("KMutex::new failed");
    };
    let shared = Arc::clone(&pair);
    let iterations = config.iterations;
    let ran = run_on_threads(config.threads, move |t| {
        let ctx = ctx.thread(t);
        let mut completed: u64 = 0;
        for _ in 0..iterations {
            if !nested(ctx, (m::A, &shared.a), (m::B, &shared.b)) {
                break;
            }
            completed += 1;
        }
        ctx.thread_end(completed);
    });
    if let Err(status) = ran {
        return Ending::no_thread(status);
    }
    let expected = u64::from(config.threads) * u64::from(config.iterations);
    match (mutexes::peek(&pair.a), mutexes::peek(&pair.b)) {
        (Ok(a), Ok(b)) => {
            ctx.counter(m::A, a, expected);
            ctx.counter(m::B, b, expected);
            Ending::done()
        }
        _ => Ending::error("reading the final counters failed"),
    }
}

/// `neg_lock_inversion`: thread 0 takes a, b; thread 1, once thread 0 is done, takes b, a.
pub fn inversion(ctx: Ctx<'static>) -> Ending {
    let Some(pair) = create_pair(ctx) else {
        return Ending::error("KMutex::new failed");
    };
    let first_done = Arc::new(AtomicBool::new(false));
    let ran = run_on_threads(2, move |t| {
        let ctx = ctx.thread(t);
        let ok = if t == 0 {
            let ok = nested(ctx, (m::A, &pair.a), (m::B, &pair.b));
            first_done.store(true, Ordering::SeqCst);
            ok
        } else {
            sleep_ms(INVERSION_DELAY_MS);
            while !first_done.load(Ordering::SeqCst) {
                sleep_ms(10);
            }
            nested(ctx, (m::B, &pair.b), (m::A, &pair.a))
        };
        ctx.thread_end(u64::from(ok));
    });
    match ran {
        Ok(()) => Ending::done(),
        Err(status) => Ending::no_thread(status),
    }
}
