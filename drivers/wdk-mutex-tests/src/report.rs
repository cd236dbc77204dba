//! Reporting: every protocol event the driver prints is built here, numbered from the protocol
//! crate's `SEQUENCE`, formatted into a stack buffer and printed with
//! `DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL, "%s", line)`, one line per call.
//!
//! `DPFLTR_ERROR_LEVEL` is used so the lines pass the kernel's default debug-print filter (error
//! level messages of every component are shown by default); no `Debug Print Filter` setting is
//! needed, although one that enables more does no harm.

use core::ffi::CStr;
use core::fmt::{self, Write};

use vmtest_event_protocol::{
    CallResult, Event, EventLine, LineBuf, MutexKind, Op, Os, Outcome, Param, SEQUENCE,
};
use wdk_mutex::errors::{DriverMutexError, GrtError};
use wdk_sys::ntddk::DbgPrintEx;
use wdk_sys::_DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID;
use wdk_sys::DPFLTR_ERROR_LEVEL;

use crate::irql;

/// The driver's name in `run-start` and in plain notes.
pub const DRIVER_NAME: &str = "wdk_mutex_tests";

/// The debug-print component: third-party drivers use `DPFLTR_IHVDRIVER_ID`.
#[allow(clippy::cast_sign_loss)]
const COMPONENT: u32 = DPFLTR_IHVDRIVER_ID as u32;
/// The debug-print level: shown by default, see the module documentation.
const LEVEL: u32 = DPFLTR_ERROR_LEVEL;

/// Prints one NUL-terminated line.
fn print(line: &CStr) {
    // SAFETY: the format is the constant "%s" with exactly one string argument; `line` is
    // NUL-terminated and outlives the call. DbgPrintEx may be called at IRQL <= DIRQL; this driver
    // prints at DISPATCH_LEVEL or below only.
    unsafe {
        DbgPrintEx(COMPONENT, LEVEL, c"%s".as_ptr().cast(), line.as_ptr());
    }
}

/// Takes the next sequence number, formats `event` and prints it.
///
/// Call it at the moment the event happens: for `acquired` and `release`, while holding the lock.
pub fn emit(event: &Event<'_>) {
    let seq = SEQUENCE.next();
    let mut line = EventLine::new();
    if line.format(seq, event).is_err() {
        // Cannot happen with this driver's short names; the gap in seq shows the loss anyway.
        note(format_args!(
            "event seq={seq} ev={} did not fit in a line",
            event.ev()
        ));
        return;
    }
    if let Ok(text) = line.c_line() {
        print(text);
    }
}

/// Prints a plain line that is not a protocol event (`wdk_mutex_tests: ...`), e.g. a bad registry
/// value. vmtest ignores such lines.
pub fn note(args: fmt::Arguments<'_>) {
    let mut line = LineBuf::<256>::new();
    // A note longer than the buffer is cut; that is fine for a human-readable hint.
    let _ = write!(line, "{DRIVER_NAME}: {args}");
    if let Ok(text) = line.c_line() {
        print(text);
    }
}

/// `run-start`: the first line of a run.
pub fn run_start() {
    emit(&Event::RunStart {
        driver: DRIVER_NAME,
        os: Some(Os::Windows),
        build: Some(env!("CARGO_PKG_VERSION")),
    });
}

/// `run-end`: the last line of a run.
pub fn run_end(scenarios: u64) {
    emit(&Event::RunEnd { scenarios });
}

/// Who reports: a scenario and a thread index within it (0 for the thread running the scenario).
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    sc: &'a str,
    t: u32,
}

impl<'a> Ctx<'a> {
    /// Thread 0 of scenario `sc`.
    pub const fn new(sc: &'a str) -> Self {
        Self { sc, t: 0 }
    }

    /// The same scenario, thread `t`.
    pub const fn thread(self, t: u32) -> Self {
        Self { sc: self.sc, t }
    }

    /// `scenario-start`.
    pub fn scenario_start(self, params: &[Param<'_>]) {
        emit(&Event::ScenarioStart {
            sc: self.sc,
            params,
        });
    }

    /// `scenario-end`.
    pub fn scenario_end(self, outcome: Outcome, msg: Option<&str>) {
        emit(&Event::ScenarioEnd {
            sc: self.sc,
            outcome,
            msg,
        });
    }

    /// `mutex`: mutex `m` of kind `k` was created.
    pub fn mutex(self, m: &str, k: MutexKind) {
        emit(&Event::Mutex { sc: self.sc, m, k });
    }

    /// `acquire`: about to call `lock`, at `irql`.
    pub fn acquire(self, m: &str, k: MutexKind, irql: u8) {
        emit(&Event::Acquire {
            sc: self.sc,
            t: self.t,
            m,
            k,
            irql,
        });
    }

    /// `acquired`: call while holding the lock (the IRQL is read now).
    pub fn acquired(self, m: &str, k: MutexKind, depth: u32) {
        emit(&Event::Acquired {
            sc: self.sc,
            t: self.t,
            m,
            k,
            irql: irql::current(),
            depth: Some(depth),
        });
    }

    /// `release`: call while still holding the lock, just before releasing it.
    pub fn release(self, m: &str, k: MutexKind, depth: u32) {
        emit(&Event::Release {
            sc: self.sc,
            t: self.t,
            m,
            k,
            irql: irql::current(),
            depth: Some(depth),
        });
    }

    /// `call`: `op` (on mutex `target`, if any) returned `r`; `irql` was read just before the call.
    pub fn call(self, op: Op, target: Option<(&str, MutexKind)>, irql: u8, r: CallResult) {
        emit(&Event::Call {
            sc: self.sc,
            t: self.t,
            op,
            m: target.map(|(m, _)| m),
            k: target.map(|(_, k)| k),
            irql,
            r,
        });
    }

    /// `counter`: the final `value` of `m`, and what it should be.
    pub fn counter(self, m: &str, value: u64, expected: u64) {
        emit(&Event::Counter {
            sc: self.sc,
            m,
            value,
            expected,
        });
    }

    /// `thread-end`: this thread finished its loop after `iterations` iterations.
    pub fn thread_end(self, iterations: u64) {
        emit(&Event::ThreadEnd {
            sc: self.sc,
            t: self.t,
            iterations,
        });
    }
}

/// The protocol's result for a `DriverMutexError`, spelled as the crate spells the variant.
pub const fn mutex_error(error: &DriverMutexError) -> CallResult {
    match error {
        DriverMutexError::IrqlTooHigh => CallResult::IrqlTooHigh,
        DriverMutexError::IrqlNotAPCLevel => CallResult::IrqlNotAPCLevel,
        DriverMutexError::PagedPoolAllocFailed => CallResult::PagedPoolAllocFailed,
    }
}

/// The protocol's result for a `GrtError` (a wrapped `DriverMutexError` is reported as itself).
pub const fn grt_error(error: &GrtError) -> CallResult {
    match error {
        GrtError::GrtAlreadyExists => CallResult::GrtAlreadyExists,
        GrtError::GrtIsNull => CallResult::GrtIsNull,
        GrtError::GrtIsEmpty => CallResult::GrtIsEmpty,
        GrtError::KeyNotFound => CallResult::KeyNotFound,
        GrtError::KeyExists => CallResult::KeyExists,
        GrtError::DowncastError => CallResult::DowncastError,
        GrtError::DriverMutexError(inner) => mutex_error(inner),
    }
}

/// `Ok` or the error's name.
pub const fn mutex_result<T>(result: &Result<T, DriverMutexError>) -> CallResult {
    match result {
        Ok(_) => CallResult::Ok,
        Err(error) => mutex_error(error),
    }
}

/// `Ok` or the error's name.
pub const fn grt_result<T>(result: &Result<T, GrtError>) -> CallResult {
    match result {
        Ok(_) => CallResult::Ok,
        Err(error) => grt_error(error),
    }
}
