//! The scenarios of the catalogue (`drivers/scenarios.json`, see `PROTOCOL.md`), one module per
//! group, and the dispatcher that frames each one with `scenario-start` and `scenario-end`.

mod contention;
mod drop_safe;
mod grt_errors;
mod irql_errors;
mod lock_order;
mod negative;
mod recursion;
mod to_owned;

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

use vmtest_event_protocol::{Outcome, Param};
use wdk_sys::NTSTATUS;

use crate::params::Config;
use crate::report::Ctx;
use crate::STOPPING;

pub use crate::catalogue::Scenario;

/// The scenario's parameters, as `scenario-start` reports them (the catalogue's `params`).
fn params(scenario: Scenario, config: &Config) -> Params {
    if scenario.counted() {
        Params::two(
            Param::int("threads", u64::from(config.threads)),
            Param::int("iterations", u64::from(config.iterations)),
        )
    } else if let Some((name, value)) = scenario.fixed_param() {
        Params::one(Param::int(name, u64::from(value)))
    } else {
        Params::NONE
    }
}

/// Runs the scenario's body (between `scenario-start` and `scenario-end`). Every scenario of the
/// catalogue has an arm here: a scenario added to `drivers/scenarios.json` does not build without one.
fn body(scenario: Scenario, ctx: Ctx<'static>, config: &Config) -> Ending {
    match scenario {
        Scenario::KmutexContention => contention::kmutex(ctx, config),
        Scenario::FastMutexContention => contention::fast_mutex(ctx, config),
        Scenario::GrtContention => contention::grt(ctx, config),
        Scenario::KmutexRecursion => recursion::run(ctx),
        Scenario::LockOrderConsistent => lock_order::consistent(ctx, config),
        Scenario::IrqlErrors => irql_errors::run(ctx),
        Scenario::GrtErrors => grt_errors::run(ctx),
        Scenario::ToOwned => to_owned::run(ctx),
        Scenario::DropSafeThenDrop => drop_safe::run(ctx),
        Scenario::NegLockInversion => lock_order::inversion(ctx),
        Scenario::NegWaitAtDispatch => negative::wait_at_dispatch(ctx),
    }
}

/// Up to two parameters, without allocating.
struct Params {
    items: [Param<'static>; 2],
    len: usize,
}

impl Params {
    const NONE: Self = Self {
        items: [Param::int("", 0), Param::int("", 0)],
        len: 0,
    };

    const fn one(first: Param<'static>) -> Self {
        Self {
            items: [first, first],
            len: 1,
        }
    }

    const fn two(first: Param<'static>, second: Param<'static>) -> Self {
        Self {
            items: [first, second],
            len: 2,
        }
    }

    fn as_slice(&self) -> &[Param<'static>] {
        &self.items[..self.len]
    }
}

/// How a scenario's body ended: the `outcome` and `msg` of its `scenario-end`.
pub struct Ending {
    outcome: Outcome,
    msg: Option<String>,
}

impl Ending {
    /// Ran to its end.
    pub const fn done() -> Self {
        Self {
            outcome: Outcome::Done,
            msg: None,
        }
    }

    /// Ran to its end, with a remark.
    pub fn done_with(msg: String) -> Self {
        Self {
            outcome: Outcome::Done,
            msg: Some(msg),
        }
    }

    /// Could not run; `msg` says why.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Error,
            msg: Some(msg.into()),
        }
    }

    /// Did not run; `msg` says why.
    pub fn skipped(msg: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Skipped,
            msg: Some(msg.into()),
        }
    }

    /// A thread could not be created.
    pub fn no_thread(status: NTSTATUS) -> Self {
        Self::error(format!("PsCreateSystemThread failed with {status:#010x}"))
    }
}

/// Runs one scenario, framed by `scenario-start` and `scenario-end`.
pub fn run(scenario: Scenario, config: &Config) {
    let ctx = Ctx::new(scenario.name());
    ctx.scenario_start(params(scenario, config).as_slice());
    let ending = if STOPPING.load(Ordering::SeqCst) {
        Ending::skipped("the driver is being unloaded")
    } else {
        body(scenario, ctx, config)
    };
    ctx.scenario_end(ending.outcome, ending.msg.as_deref());
}
