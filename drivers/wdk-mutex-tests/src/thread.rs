//! System threads: starting one with a closure, waiting for it, sleeping, and running a body on N
//! threads released together.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::mem::{size_of, ManuallyDrop};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU32, Ordering};

use wdk_sys::ntddk::{
    KeDelayExecutionThread, PsCreateSystemThread, PsTerminateSystemThread, ZwClose,
    ZwWaitForSingleObject,
};
use wdk_sys::_MODE::KernelMode;
use wdk_sys::{
    BOOLEAN, FALSE, HANDLE, KPROCESSOR_MODE, LARGE_INTEGER, NTSTATUS, NT_SUCCESS,
    OBJECT_ATTRIBUTES, OBJ_KERNEL_HANDLE, PVOID, STATUS_SUCCESS, THREAD_ALL_ACCESS,
};

/// `KernelMode` as the `KPROCESSOR_MODE` the wait functions take.
#[allow(clippy::cast_possible_truncation)]
pub const KERNEL_MODE: KPROCESSOR_MODE = KernelMode as KPROCESSOR_MODE;
/// `FALSE` as a `BOOLEAN` argument (not alertable, not signalled).
#[allow(clippy::cast_possible_truncation)]
pub const NO: BOOLEAN = FALSE as BOOLEAN;

/// What a new thread runs. Boxed twice so the context pointer is thin.
type Task = Box<dyn FnOnce() + Send + 'static>;

/// A system thread this driver started. Dropping it waits until the thread has ended, then closes
/// the handle, so no thread can outlive the data it uses or the driver image.
pub struct SystemThread {
    handle: HANDLE,
}

/// Starts `task` on a new system thread (in the System process, at `PASSIVE_LEVEL`).
///
/// # Errors
///
/// The `NTSTATUS` of `PsCreateSystemThread` when the thread could not be created.
pub fn spawn<F>(task: F) -> Result<SystemThread, NTSTATUS>
where
    F: FnOnce() + Send + 'static,
{
    let task: Box<Task> = Box::new(Box::new(task));
    let context = Box::into_raw(task);
    #[allow(clippy::cast_possible_truncation)]
    let mut attributes = OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        Attributes: OBJ_KERNEL_HANDLE,
        ..Default::default()
    };
    let mut handle: HANDLE = null_mut();
    // SAFETY: called at PASSIVE_LEVEL; `handle` and `attributes` are live locals (a kernel handle
    // is asked for); a null process handle means the System process; `trampoline` has the
    // KSTART_ROUTINE signature and takes ownership of `context`.
    let status = unsafe {
        PsCreateSystemThread(
            &mut handle,
            THREAD_ALL_ACCESS,
            &mut attributes,
            null_mut(),
            null_mut(),
            Some(trampoline),
            context.cast(),
        )
    };
    if !NT_SUCCESS(status) {
        // SAFETY: no thread was created, so `context` was not handed over: it is still ours.
        drop(unsafe { Box::from_raw(context) });
        return Err(status);
    }
    Ok(SystemThread { handle })
}

/// The start routine of every thread: run the task, then end the thread.
unsafe extern "C" fn trampoline(context: PVOID) {
    // SAFETY: `context` is the `Box<Task>` leaked by `spawn` for exactly this thread.
    let task = unsafe { Box::from_raw(context.cast::<Task>()) };
    task();
    // SAFETY: this is a system thread created by PsCreateSystemThread, running at PASSIVE_LEVEL,
    // and nothing on its stack needs dropping any more.
    let _ = unsafe { PsTerminateSystemThread(STATUS_SUCCESS) };
}

impl SystemThread {
    /// Waits until the thread has ended.
    pub fn join(self) {
        drop(self);
    }

    /// Gives up ownership of the handle (to keep it in a static).
    pub fn into_raw(self) -> HANDLE {
        ManuallyDrop::new(self).handle
    }

    /// Takes back a handle given up with [`SystemThread::into_raw`].
    ///
    /// # Safety
    ///
    /// `handle` must come from `into_raw` and must not be used again by the caller.
    pub unsafe fn from_raw(handle: HANDLE) -> Self {
        Self { handle }
    }
}

impl Drop for SystemThread {
    fn drop(&mut self) {
        // SAFETY: `handle` is a kernel handle to a thread, owned by `self`; waiting without a
        // timeout is allowed at PASSIVE_LEVEL, where every owner of a SystemThread drops it.
        let _ = unsafe { ZwWaitForSingleObject(self.handle, NO, null_mut()) };
        // SAFETY: as above; the handle is closed exactly once, here.
        let _ = unsafe { ZwClose(self.handle) };
    }
}

/// Sleeps the current thread for `milliseconds` (at `PASSIVE_LEVEL` or `APC_LEVEL`).
pub fn sleep_ms(milliseconds: u32) {
    // A negative interval is relative, in 100-nanosecond units.
    let mut interval = LARGE_INTEGER {
        QuadPart: -10_000 * i64::from(milliseconds),
    };
    // SAFETY: the scenarios sleep at PASSIVE_LEVEL only; `interval` is a live local.
    let _ = unsafe { KeDelayExecutionThread(KERNEL_MODE, NO, &mut interval) };
}

const GATE_CLOSED: u32 = 0;
const GATE_OPEN: u32 = 1;
const GATE_CANCELLED: u32 = 2;

/// A start line: threads wait at it until it opens (all start together) or is cancelled.
pub struct Gate(AtomicU32);

impl Gate {
    /// A closed gate.
    pub const fn new() -> Self {
        Self(AtomicU32::new(GATE_CLOSED))
    }

    /// Waits until the gate opens (true) or is cancelled (false).
    pub fn wait(&self) -> bool {
        loop {
            match self.0.load(Ordering::SeqCst) {
                GATE_OPEN => return true,
                GATE_CANCELLED => return false,
                _ => sleep_ms(1),
            }
        }
    }

    /// Lets every waiting thread go.
    pub fn open(&self) {
        self.0.store(GATE_OPEN, Ordering::SeqCst);
    }

    /// Sends every waiting thread home without running.
    pub fn cancel(&self) {
        self.0.store(GATE_CANCELLED, Ordering::SeqCst);
    }
}

/// Runs `body(t)` for `t` in `0..count`: `t = 0` on the calling thread, the others on new system
/// threads, all released together; returns when every one has finished.
///
/// # Errors
///
/// The `NTSTATUS` of the first thread that could not be created. Then no `body` has run: the
/// threads already created are released without running it and waited for.
pub fn run_on_threads<F>(count: u32, body: F) -> Result<(), NTSTATUS>
where
    F: Fn(u32) + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let gate = Arc::new(Gate::new());
    let mut threads = Vec::new();
    for t in 1..count {
        let (body, thread_gate) = (Arc::clone(&body), Arc::clone(&gate));
        let started = spawn(move || {
            if thread_gate.wait() {
                body(t);
            }
        });
        match started {
            Ok(thread) => threads.push(thread),
            Err(status) => {
                gate.cancel();
                threads.into_iter().for_each(SystemThread::join);
                return Err(status);
            }
        }
    }
    gate.open();
    body(0);
    threads.into_iter().for_each(SystemThread::join);
    Ok(())
}
