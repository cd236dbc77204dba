//! One interface over wdk-mutex's `KMutex` and `FastMutex`, so a scenario is written once and run
//! on both kinds, plus the helpers every scenario uses to create and lock a mutex with reporting.

use alloc::boxed::Box;
use core::ops::DerefMut;

use vmtest_event_protocol::{MutexKind, Op};
use wdk_mutex::errors::DriverMutexError;
use wdk_mutex::fast_mutex::{FastMutex, FastMutexGuard};
use wdk_mutex::kmutex::{KMutex, KMutexGuard};

use crate::irql;
use crate::report::{mutex_error, mutex_result, Ctx};

/// A wdk-mutex mutex type protecting a `T`: the crate's API, unchanged, behind one trait.
pub trait TestMutex<T>: Sized {
    /// The protocol's name for the kind.
    const KIND: MutexKind;

    /// The guard `lock` returns.
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a;

    /// `new(data)`.
    fn create(data: T) -> Result<Self, DriverMutexError>;

    /// `lock()`.
    fn guard(&self) -> Result<Self::Guard<'_>, DriverMutexError>;

    /// The guard's `drop_safe()`. It does not consume the guard: dropping the guard afterwards
    /// releases the mutex a second time.
    fn release_safe(guard: &mut Self::Guard<'_>) -> Result<(), DriverMutexError>;

    /// `to_owned()`.
    ///
    /// # Safety
    ///
    /// As for the crate's `to_owned`: no reference to the mutex may be used afterwards.
    unsafe fn take(self) -> T;

    /// `to_owned_box()`.
    ///
    /// # Safety
    ///
    /// As for the crate's `to_owned_box`.
    unsafe fn take_box(self) -> Box<T>;
}

impl<T> TestMutex<T> for KMutex<T> {
    const KIND: MutexKind = MutexKind::KMutex;
    type Guard<'a>
        = KMutexGuard<'a, T>
    where
        Self: 'a;

    fn create(data: T) -> Result<Self, DriverMutexError> {
        Self::new(data)
    }

    fn guard(&self) -> Result<Self::Guard<'_>, DriverMutexError> {
        self.lock()
    }

    fn release_safe(guard: &mut Self::Guard<'_>) -> Result<(), DriverMutexError> {
        guard.drop_safe()
    }

    unsafe fn take(self) -> T {
        // SAFETY: forwarded from the caller.
        unsafe { self.to_owned() }
    }

    unsafe fn take_box(self) -> Box<T> {
        // SAFETY: forwarded from the caller.
        unsafe { self.to_owned_box() }
    }
}

impl<T> TestMutex<T> for FastMutex<T> {
    const KIND: MutexKind = MutexKind::FastMutex;
    type Guard<'a>
        = FastMutexGuard<'a, T>
    where
        Self: 'a;

    fn create(data: T) -> Result<Self, DriverMutexError> {
        Self::new(data)
    }

    fn guard(&self) -> Result<Self::Guard<'_>, DriverMutexError> {
        self.lock()
    }

    fn release_safe(guard: &mut Self::Guard<'_>) -> Result<(), DriverMutexError> {
        guard.drop_safe()
    }

    unsafe fn take(self) -> T {
        // SAFETY: forwarded from the caller.
        unsafe { self.to_owned() }
    }

    unsafe fn take_box(self) -> Box<T> {
        // SAFETY: forwarded from the caller.
        unsafe { self.to_owned_box() }
    }
}

/// `M::new(data)` reported as `call op=new` and, when it worked, `mutex`.
pub fn create<M: TestMutex<T>, T>(ctx: Ctx<'_>, m: &str, data: T) -> Option<M> {
    let irql = irql::current();
    let created = M::create(data);
    ctx.call(Op::New, Some((m, M::KIND)), irql, mutex_result(&created));
    if created.is_ok() {
        ctx.mutex(m, M::KIND);
    }
    created.ok()
}

/// One logged critical section: `acquire`, `lock`, `acquired` (depth 1), `critical`, `release`,
/// unlock. A failed `lock` is reported as `call op=lock` with the error.
pub fn locked<M: TestMutex<T>, T, R>(
    ctx: Ctx<'_>,
    m: &str,
    mutex: &M,
    critical: impl FnOnce(&mut T) -> R,
) -> Result<R, DriverMutexError> {
    let irql = irql::current();
    ctx.acquire(m, M::KIND, irql);
    match mutex.guard() {
        Ok(mut guard) => {
            ctx.acquired(m, M::KIND, 1);
            let result = critical(&mut *guard);
            ctx.release(m, M::KIND, 1);
            drop(guard);
            Ok(result)
        }
        Err(error) => {
            ctx.call(Op::Lock, Some((m, M::KIND)), irql, mutex_error(&error));
            Err(error)
        }
    }
}

/// The value behind `mutex`, read under the lock without reporting (the scenario's threads have
/// ended, so nobody contends).
pub fn peek<M: TestMutex<T>, T: Copy>(mutex: &M) -> Result<T, DriverMutexError> {
    mutex.guard().map(|guard| *guard)
}
