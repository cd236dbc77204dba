//! `grt_errors`: the Grt's documented errors, each call reported with its result:
//!
//! get and register before `init` (`GrtIsNull`), `init` (`Ok`) and again (`GrtAlreadyExists`), get
//! before any registration (`GrtIsEmpty`), register (`Ok`), get an unknown key (`KeyNotFound`), get
//! with the wrong type and the wrong kind (`DowncastError`), get right (`Ok`), checked double
//! registration of both kinds (`KeyExists`), `destroy` (`Ok`), get after destroy and destroy again
//! (`GrtIsNull`).

use vmtest_event_protocol::{CallResult, MutexKind, Op};
use wdk_mutex::grt::Grt;

use super::Ending;
use crate::irql;
use crate::report::{grt_result, Ctx};

/// The `KMutex` label (protects a `u32`).
const KM: &str = "vmtest_grt_errors_km";
/// The `FastMutex` label (protects a `u32`).
const FM: &str = "vmtest_grt_errors_fm";
/// A label never registered.
const MISSING: &str = "vmtest_grt_errors_missing";

/// Runs the scenario. The Grt must not be initialised when it starts (every scenario that
/// initialises it destroys it again).
pub fn run(ctx: Ctx<'static>) -> Ending {
    let km = Some((KM, MutexKind::KMutex));
    let fm = Some((FM, MutexKind::FastMutex));
    let missing = Some((MISSING, MutexKind::KMutex));
    // Each step: read the IRQL, make the call, report it; the step's value is the result.
    macro_rules! step {
        ($op:expr, $target:expr, $call:expr) => {{
            let irql = irql::current();
            let r = grt_result(&$call);
            ctx.call($op, $target, irql, r);
            r
        }};
    }

    step!(Op::GrtGet, km, Grt::get_kmutex::<u32>(KM));
    step!(Op::GrtRegister, km, Grt::register_kmutex(KM, 0u32));
    if step!(Op::GrtInit, None, Grt::init()) != CallResult::Ok {
        return Ending::error("Grt::init failed (is a Grt left over from an earlier scenario?)");
    }
    step!(Op::GrtInit, None, Grt::init());
    step!(Op::GrtGet, km, Grt::get_kmutex::<u32>(KM));
    step!(Op::GrtRegister, km, Grt::register_kmutex(KM, 0u32));
    step!(Op::GrtGet, missing, Grt::get_kmutex::<u32>(MISSING));
    step!(Op::GrtGet, km, Grt::get_kmutex::<u64>(KM));
    step!(
        Op::GrtGet,
        Some((KM, MutexKind::FastMutex)),
        Grt::get_fast_mutex::<u32>(KM)
    );
    step!(Op::GrtGet, km, Grt::get_kmutex::<u32>(KM));
    step!(
        Op::GrtRegisterChecked,
        km,
        Grt::register_kmutex_checked(KM, 1u32)
    );
    step!(Op::GrtRegister, fm, Grt::register_fast_mutex(FM, 0u32));
    step!(
        Op::GrtRegisterChecked,
        fm,
        Grt::register_fast_mutex_checked(FM, 1u32)
    );
    // SAFETY: no reference obtained from the Grt is alive (each `get` result was dropped at the
    // end of its step) and no other thread uses it.
    step!(Op::GrtDestroy, None, unsafe { Grt::destroy() });
    step!(Op::GrtGet, km, Grt::get_kmutex::<u32>(KM));
    // SAFETY: as above; the Grt is already gone, so this must return GrtIsNull.
    step!(Op::GrtDestroy, None, unsafe { Grt::destroy() });
    Ending::done()
}
