//! The scenarios of `PROTOCOL.md`, one module per group, and the dispatcher that frames each one
//! with `scenario-start` and `scenario-end`.

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

use crate::params::{Config, Selection};
use crate::report::Ctx;
use crate::STOPPING;

/// A scenario this driver implements, named as in `PROTOCOL.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    KmutexContention,
    FastMutexContention,
    GrtContention,
    KmutexRecursion,
    LockOrderConsistent,
    IrqlErrors,
    GrtErrors,
    ToOwned,
    DropSafeThenDrop,
    NegLockInversion,
    NegWaitAtDispatch,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Self; 11] = [
        Self::KmutexContention,
        Self::FastMutexContention,
        Self::GrtContention,
        Self::KmutexRecursion,
        Self::LockOrderConsistent,
        Self::IrqlErrors,
        Self::GrtErrors,
        Self::ToOwned,
        Self::DropSafeThenDrop,
        Self::NegLockInversion,
        Self::NegWaitAtDispatch,
    ];

    /// What runs when `Scenarios` is absent: everything but the negative controls, with
    /// `drop_safe_then_drop` last because its second release may stop the system.
    pub const DEFAULT: [Self; 9] = [
        Self::KmutexContention,
        Self::FastMutexContention,
        Self::GrtContention,
        Self::KmutexRecursion,
        Self::LockOrderConsistent,
        Self::IrqlErrors,
        Self::GrtErrors,
        Self::ToOwned,
        Self::DropSafeThenDrop,
    ];

    /// The protocol name (the `sc` field).
    pub const fn name(self) -> &'static str {
        match self {
            Self::KmutexContention => "kmutex_contention",
            Self::FastMutexContention => "fast_mutex_contention",
            Self::GrtContention => "grt_contention",
            Self::KmutexRecursion => "kmutex_recursion",
            Self::LockOrderConsistent => "lock_order_consistent",
            Self::IrqlErrors => "irql_errors",
            Self::GrtErrors => "grt_errors",
            Self::ToOwned => "to_owned",
            Self::DropSafeThenDrop => "drop_safe_then_drop",
            Self::NegLockInversion => "neg_lock_inversion",
            Self::NegWaitAtDispatch => "neg_wait_at_dispatch",
        }
    }

    /// The scenario called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
    }

    /// The scenario's parameters, as `scenario-start` reports them.
    fn params(self, config: &Config) -> Params {
        match self {
            Self::KmutexContention
            | Self::FastMutexContention
            | Self::GrtContention
            | Self::LockOrderConsistent => Params::two(
                Param::int("threads", u64::from(config.threads)),
                Param::int("iterations", u64::from(config.iterations)),
            ),
            Self::NegLockInversion => Params::one(Param::int(
                "delay_ms",
                u64::from(lock_order::INVERSION_DELAY_MS),
            )),
            Self::NegWaitAtDispatch => Params::one(Param::int(
                "timeout_ms",
                u64::from(negative::WAIT_TIMEOUT_MS),
            )),
            Self::KmutexRecursion
            | Self::IrqlErrors
            | Self::GrtErrors
            | Self::ToOwned
            | Self::DropSafeThenDrop => Params::NONE,
        }
    }

    /// Runs the scenario's body (between `scenario-start` and `scenario-end`).
    fn body(self, ctx: Ctx<'static>, config: &Config) -> Ending {
        match self {
            Self::KmutexContention => contention::kmutex(ctx, config),
            Self::FastMutexContention => contention::fast_mutex(ctx, config),
            Self::GrtContention => contention::grt(ctx, config),
            Self::KmutexRecursion => recursion::run(ctx),
            Self::LockOrderConsistent => lock_order::consistent(ctx, config),
            Self::IrqlErrors => irql_errors::run(ctx),
            Self::GrtErrors => grt_errors::run(ctx),
            Self::ToOwned => to_owned::run(ctx),
            Self::DropSafeThenDrop => drop_safe::run(ctx),
            Self::NegLockInversion => lock_order::inversion(ctx),
            Self::NegWaitAtDispatch => negative::wait_at_dispatch(ctx),
        }
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

/// Runs one entry of the `Scenarios` list, framed by `scenario-start` and `scenario-end`.
pub fn run(selection: &Selection, config: &Config) {
    match selection {
        Selection::Known(scenario) => {
            let ctx = Ctx::new(scenario.name());
            ctx.scenario_start(scenario.params(config).as_slice());
            let ending = if STOPPING.load(Ordering::SeqCst) {
                Ending::skipped("the driver is being unloaded")
            } else {
                scenario.body(ctx, config)
            };
            ctx.scenario_end(ending.outcome, ending.msg.as_deref());
        }
        Selection::Unknown(name) => {
            let ctx = Ctx::new(name);
            ctx.scenario_start(&[]);
            ctx.scenario_end(
                Outcome::Error,
                Some("unknown scenario: see PROTOCOL.md for the names"),
            );
        }
    }
}
