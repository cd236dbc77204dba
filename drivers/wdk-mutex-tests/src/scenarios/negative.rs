//! `neg_wait_at_dispatch` (negative control, run only when named): a dispatcher wait with a
//! non-zero timeout at `DISPATCH_LEVEL`, without wdk-mutex. Windows must stop with a bugcheck
//! (`IRQL_NOT_LESS_OR_EQUAL`, `ATTEMPTED_SWITCH_FROM_DPC` or a relative) that vmtest reports by code
//! and name. `scenario-start` has been printed before; if the wait returns, the scenario reports
//! the call and its status and ends (vmtest then flags the control as failed).

use alloc::format;
use core::ptr::addr_of_mut;

use vmtest_event_protocol::{CallResult, Op};
use wdk_sys::ntddk::{KeInitializeEvent, KeWaitForSingleObject};
use wdk_sys::_EVENT_TYPE::NotificationEvent;
use wdk_sys::_KWAIT_REASON::Executive;
use wdk_sys::{KEVENT, LARGE_INTEGER};

use super::Ending;
use crate::catalogue;
use crate::irql::{self, RaisedIrql};
use crate::report::{note, Ctx};
use crate::thread::{KERNEL_MODE, NO};

/// The wait's timeout (the catalogue's `timeout_ms`): non-zero, which is what makes it illegal at
/// `DISPATCH_LEVEL`.
pub const WAIT_TIMEOUT_MS: u32 = catalogue::TIMEOUT_MS;

/// Runs the negative control.
pub fn wait_at_dispatch(ctx: Ctx<'static>) -> Ending {
    let mut event = KEVENT::default();
    // SAFETY: `event` is a live local in non-paged memory (the kernel stack of a running thread),
    // initialised once, at PASSIVE_LEVEL; it is never signalled.
    unsafe { KeInitializeEvent(&mut event, NotificationEvent, NO) };
    let mut timeout = LARGE_INTEGER {
        QuadPart: -10_000 * i64::from(WAIT_TIMEOUT_MS),
    };

    // SAFETY: deliberately not: the wait below is illegal at this IRQL. That is the negative
    // control; the expected result is a bugcheck.
    let Some(raised) = (unsafe { RaisedIrql::raise(irql::DISPATCH) }) else {
        note(format_args!(
            "neg_wait_at_dispatch: cannot raise to DISPATCH_LEVEL"
        ));
        return Ending::error("cannot raise the IRQL to DISPATCH_LEVEL");
    };
    let irql = irql::current();
    // SAFETY: the arguments are valid (an initialised event, a live timeout); the IRQL is not, on
    // purpose (see above).
    let status = unsafe {
        KeWaitForSingleObject(
            addr_of_mut!(event).cast(),
            Executive,
            KERNEL_MODE,
            NO,
            &mut timeout,
        )
    };
    drop(raised);

    // Reaching this line is the failure of the control: the call returned (`r=Ok`, its status
    // in the message) where the system should have stopped.
    ctx.call(Op::Wait, None, irql, CallResult::Ok);
    Ending::done_with(format!(
        "the wait returned {status:#010x} at DISPATCH_LEVEL instead of stopping the system"
    ))
}
