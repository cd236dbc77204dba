//! `grt_errors`: the Grt's documented errors, one call per step of the catalogue's table
//! (`catalogue::GRT_ERRORS`, from `drivers/scenarios.json`), each reported with its result:
//!
//! get and register before `init` (`GrtIsNull`), `init` (`Ok`) and again (`GrtAlreadyExists`), get
//! before any registration (`GrtIsEmpty`), register (`Ok`), get an unknown key (`KeyNotFound`), get
//! with the wrong type and the wrong kind (`DowncastError`), get right (`Ok`), checked double
//! registration (`KeyExists`), silent replacement (`Ok`), both again for a `FastMutex`, `destroy`
//! (`Ok`), get after destroy and destroy again (`GrtIsNull`). A step's label is its `m` name.

use vmtest_event_protocol::{CallResult, MutexKind, Op};
use wdk_mutex::grt::Grt;

use super::Ending;
use crate::catalogue::{Step, GRT_ERRORS};
use crate::irql;
use crate::report::{grt_result, Ctx};

/// Runs the scenario. The Grt must not be initialised when it starts (every scenario that
/// initialises it destroys it again).
pub fn run(ctx: Ctx<'static>) -> Ending {
    for step in &GRT_ERRORS {
        let irql = irql::current();
        let Some(r) = call(step) else {
            return Ending::error("a grt_errors step is not a Grt call");
        };
        ctx.call(step.op, step.m, irql, r);
        if step.op == Op::GrtInit && step.r == CallResult::Ok && r != CallResult::Ok {
            return Ending::error("Grt::init failed (is a Grt left over from an earlier scenario?)");
        }
    }
    Ending::done()
}

/// Makes one step's call: `u32` data (a `u64` for a wrong-type step); `None` for an operation
/// that is not the Grt's.
fn call(step: &Step) -> Option<CallResult> {
    let label = step.m.map_or("", |(m, _)| m);
    let fast = matches!(step.m, Some((_, MutexKind::FastMutex)));
    let r = match step.op {
        Op::GrtInit => grt_result(&Grt::init()),
        // SAFETY: no reference obtained from the Grt is alive (each get's result is dropped
        // within its step) and no other thread uses it.
        Op::GrtDestroy => grt_result(&unsafe { Grt::destroy() }),
        Op::GrtRegister if fast => grt_result(&Grt::register_fast_mutex(label, 0u32)),
        Op::GrtRegister => grt_result(&Grt::register_kmutex(label, 0u32)),
        Op::GrtRegisterChecked if fast => {
            grt_result(&Grt::register_fast_mutex_checked(label, 1u32))
        }
        Op::GrtRegisterChecked => grt_result(&Grt::register_kmutex_checked(label, 1u32)),
        Op::GrtGet if fast => grt_result(&Grt::get_fast_mutex::<u32>(label)),
        Op::GrtGet if step.wrong_type => grt_result(&Grt::get_kmutex::<u64>(label)),
        Op::GrtGet => grt_result(&Grt::get_kmutex::<u32>(label)),
        _ => return None,
    };
    Some(r)
}
