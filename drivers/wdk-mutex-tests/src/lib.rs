//! # wdk-mutex test driver
//!
//! A WDM driver that exercises the `wdk-mutex` crate inside Windows and reports every step as a
//! line of vmtest's event protocol (`drivers/PROTOCOL.md`), printed with `DbgPrintEx`.
//!
//! `DriverEntry` reads the service's `Parameters` key (`Scenarios`, `Threads`, `Iterations`), starts
//! one system worker thread that runs the selected scenarios in order, and returns at once.
//! `DriverUnload` asks the worker to skip what is left, waits for it, and frees what remains.
//!
//! Modules: [`catalogue`] (generated from `drivers/scenarios.json`: the scenarios, their names and
//! step tables), [`params`] (the registry), [`report`] (events and printing), [`irql`], [`thread`]
//! (system threads), [`mutexes`] (one interface over `KMutex` and `FastMutex`), and one module per
//! scenario group under [`scenarios`].

#![no_std]

extern crate alloc;

#[cfg(not(test))]
extern crate wdk_panic;

mod catalogue;
mod irql;
mod mutexes;
mod params;
mod report;
mod scenarios;
mod thread;

use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_mutex::grt::Grt;
use wdk_sys::{DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, STATUS_SUCCESS};

use crate::params::Config;
use crate::thread::SystemThread;

#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// The worker thread's handle, from `DriverEntry` until `DriverUnload` takes it.
static WORKER: AtomicPtr<c_void> = AtomicPtr::new(null_mut());

/// Set by `DriverUnload`: the worker reports the scenarios it has not started as skipped.
pub(crate) static STOPPING: AtomicBool = AtomicBool::new(false);

/// The driver's entry point: read the parameters, start the worker, return.
///
/// # Safety
///
/// Called by the I/O manager only, at `PASSIVE_LEVEL`, with a valid driver object and registry
/// path.
// SAFETY: "DriverEntry" is the entry point the linker is told about (/ENTRY:DriverEntry); no other
// symbol in the image has that name.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: &mut DRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    driver.DriverUnload = Some(driver_unload);
    STOPPING.store(false, Ordering::SeqCst);

    // SAFETY: `registry_path` is the pointer the I/O manager passed to DriverEntry, valid until
    // DriverEntry returns; this runs at PASSIVE_LEVEL.
    let config = match unsafe { Config::read(registry_path) } {
        Ok(config) => config,
        // An unknown scenario or a parameter out of range: the note names it, the load fails.
        Err(status) => return status,
    };
    match thread::spawn(move || run(&config)) {
        Ok(worker) => {
            WORKER.store(worker.into_raw(), Ordering::SeqCst);
            STATUS_SUCCESS
        }
        Err(status) => {
            report::note(format_args!(
                "cannot start the worker thread: PsCreateSystemThread returned {status:#010x}"
            ));
            status
        }
    }
}

/// Stops the run early if it is still going, waits for the worker, and frees what is left.
unsafe extern "C" fn driver_unload(_driver: PDRIVER_OBJECT) {
    STOPPING.store(true, Ordering::SeqCst);
    let worker = WORKER.swap(null_mut(), Ordering::SeqCst);
    if !worker.is_null() {
        // SAFETY: the handle was stored by `driver_entry` from `SystemThread::into_raw` and is
        // taken out of WORKER exactly once (the swap above). Dropping the thread waits for it.
        drop(unsafe { SystemThread::from_raw(worker) });
    }
    // SAFETY: the worker and every thread it started have ended, so nothing still holds a
    // reference from the Grt. The scenarios destroy what they create; this only frees a Grt a
    // failed scenario may have left behind (GrtIsNull otherwise, which is ignored).
    let _ = unsafe { Grt::destroy() };
}

/// The worker: `run-start`, every selected scenario, `run-end`.
fn run(config: &Config) {
    report::run_start();
    let mut ended: u64 = 0;
    for &scenario in &config.scenarios {
        scenarios::run(scenario, config);
        ended += 1;
    }
    report::run_end(ended);
}
