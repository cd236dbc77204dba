//! The current processor's IRQL: reading it, and raising it for a scope.

use core::marker::PhantomData;

use wdk_sys::ntddk::{KeGetCurrentIrql, KeLowerIrql, KfRaiseIrql};
use wdk_sys::DISPATCH_LEVEL;

/// `DISPATCH_LEVEL` (2).
#[allow(clippy::cast_possible_truncation)]
pub const DISPATCH: u8 = DISPATCH_LEVEL as u8;

/// The current IRQL.
pub fn current() -> u8 {
    // SAFETY: KeGetCurrentIrql only reads the current processor's IRQL; it is callable at any IRQL.
    unsafe { KeGetCurrentIrql() }
}

/// The IRQL raised for a scope: dropping the guard lowers it back to what it was.
///
/// The guard is neither `Send` nor `Sync`: it must be dropped by the thread that raised the IRQL
/// (at `APC_LEVEL` the IRQL travels with the thread; at `DISPATCH_LEVEL` and above the thread is
/// not rescheduled). While raised above `DISPATCH_LEVEL`, call
/// nothing but `KeGetCurrentIrql`-style checks: no printing, no allocation, no waiting.
#[must_use = "the IRQL is lowered again when the guard is dropped"]
pub struct RaisedIrql {
    previous: u8,
    _not_send: PhantomData<*const ()>,
}

impl RaisedIrql {
    /// Raises the IRQL to `level`; `None`, changing nothing, if the IRQL is already above it
    /// (lowering through `KfRaiseIrql` would bugcheck).
    ///
    /// # Safety
    ///
    /// Until the guard is dropped, the caller may only call functions allowed at `level`, and must
    /// drop the guards it holds in the reverse order they were taken.
    pub unsafe fn raise(level: u8) -> Option<Self> {
        if current() > level {
            return None;
        }
        // SAFETY: `level` is not below the current IRQL (checked above), as KfRaiseIrql requires;
        // the caller keeps to what is allowed at `level` until the guard lowers it again.
        let previous = unsafe { KfRaiseIrql(level) };
        Some(Self {
            previous,
            _not_send: PhantomData,
        })
    }
}

impl Drop for RaisedIrql {
    fn drop(&mut self) {
        // SAFETY: `previous` is the IRQL this thread ran at before the guard raised it, and the
        // guard cannot leave the thread, so this lowers back to exactly that level.
        unsafe { KeLowerIrql(self.previous) };
    }
}
