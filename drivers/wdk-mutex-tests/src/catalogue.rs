//! The scenario catalogue. Generated from drivers/scenarios.json by `python -m vmtest.events.catalogue_gen`: do not edit.
//!
//! Scenario names and flags, parameter ranges, the names the events use, and the step tables of
//! the scenarios that make a fixed series of calls (`drivers/PROTOCOL.md`, "Scenarios").

#![allow(dead_code)]

use vmtest_event_protocol::{CallResult, MutexKind, Op};

/// `threads` when not set: threads of the contention and lock-order scenarios (thread 0 runs the scenario).
pub const THREADS_DEFAULT: u32 = 3;
/// The smallest `threads` accepted.
pub const THREADS_MIN: u32 = 1;
/// The largest `threads` accepted.
pub const THREADS_MAX: u32 = 16;
/// `iterations` when not set: lock iterations per thread.
pub const ITERATIONS_DEFAULT: u32 = 500;
/// The smallest `iterations` accepted.
pub const ITERATIONS_MIN: u32 = 1;
/// The largest `iterations` accepted.
pub const ITERATIONS_MAX: u32 = 100_000;
/// The fixed parameter `delay_ms`.
pub const DELAY_MS: u32 = 100;
/// The fixed parameter `timeout_ms`.
pub const TIMEOUT_MS: u32 = 10;

/// The names of mutexes and counters in the events (`m=`).
pub mod m {
    /// `counter`.
    pub const COUNTER: &str = "counter";
    /// `km`.
    pub const KM: &str = "km";
    /// `a`.
    pub const A: &str = "a";
    /// `b`.
    pub const B: &str = "b";
    /// `fm`.
    pub const FM: &str = "fm";
    /// `fm2`.
    pub const FM2: &str = "fm2";
    /// `missing`.
    pub const MISSING: &str = "missing";
    /// `km_drops`.
    pub const KM_DROPS: &str = "km_drops";
    /// `km_box`.
    pub const KM_BOX: &str = "km_box";
    /// `km_box_drops`.
    pub const KM_BOX_DROPS: &str = "km_box_drops";
    /// `fm_drops`.
    pub const FM_DROPS: &str = "fm_drops";
    /// `fm_box`.
    pub const FM_BOX: &str = "fm_box";
    /// `fm_box_drops`.
    pub const FM_BOX_DROPS: &str = "fm_box_drops";
}

/// A scenario, named as in `PROTOCOL.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// N threads x M increments of a counter under a KMutex.
    KmutexContention,
    /// the same under a FastMutex (held at APC_LEVEL, irql 1).
    FastMutexContention,
    /// the same under a KMutex registered in the Grt as counter, looked up by each thread.
    GrtContention,
    /// one thread locks a KMutex twice, then releases twice.
    KmutexRecursion,
    /// N threads x M times: KMutex a, then KMutex b, released in reverse order.
    LockOrderConsistent,
    /// lock at DISPATCH on both kinds; KMutex::lock at APC (reached by holding a FastMutex); FastMutexGuard::drop_safe at DISPATCH, then at APC; FastMutex::new at DISPATCH and above; KMutexGuard::drop_safe above DISPATCH, then at PASSIVE.
    IrqlErrors,
    /// get and register before init, double init, get before any registration, unknown key, wrong type, wrong kind, checked double registration of both kinds, silent replacement, destroy, get after destroy, second destroy.
    GrtErrors,
    /// for each kind: a mutex made with 7, locked and 35 added, then to_owned / to_owned_box; the value comes back and is dropped once.
    ToOwned,
    /// for fm (FastMutex), then km (KMutex): lock, drop_safe (the release), then the guard leaves scope and its Drop releases a second time (reported as call op=drop, printed only if the system survived it).
    DropSafeThenDrop,
    /// negative control: thread 0 takes a then b; thread 1, once thread 0 is done and delay_ms later, takes b then a (no deadlock).
    NegLockInversion,
    /// negative control: a dispatcher wait of timeout_ms at DISPATCH_LEVEL without the crate (Linux: msleep with preemption disabled).
    NegWaitAtDispatch,
}

impl Scenario {
    /// Every scenario, in catalogue order.
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

    /// What runs when no scenario is named: all but the negative controls, `last` ones at the end.
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

    /// Whether it is a negative control (runs only when named).
    pub const fn negative(self) -> bool {
        matches!(
            self,
            Self::NegLockInversion
                | Self::NegWaitAtDispatch
        )
    }

    /// Whether its params are `threads` and `iterations`.
    pub const fn counted(self) -> bool {
        matches!(
            self,
            Self::KmutexContention
                | Self::FastMutexContention
                | Self::GrtContention
                | Self::LockOrderConsistent
        )
    }

    /// Its one fixed parameter (name and value), if it has one.
    pub const fn fixed_param(self) -> Option<(&'static str, u32)> {
        match self {
            Self::NegLockInversion => Some(("delay_ms", 100)),
            Self::NegWaitAtDispatch => Some(("timeout_ms", 10)),
            _ => None,
        }
    }

    /// The scenario called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == name)
    }
}

/// One call a scenario makes, as its `call` event must show it.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The operation.
    pub op: Op,
    /// The mutex (name and kind) it is made on, if any.
    pub m: Option<(&'static str, MutexKind)>,
    /// The IRQL it is made at.
    pub irql: u8,
    /// What it must return.
    pub r: CallResult,
    /// It asks for the wrong data type (a `u64` where a `u32` was registered).
    pub wrong_type: bool,
}

/// The calls of `irql_errors`, in order.
pub const IRQL_ERRORS: [Step; 11] = [
    Step {
        op: Op::Lock,
        m: Some(("km", MutexKind::KMutex)),
        irql: 2,
        r: CallResult::IrqlTooHigh,
        wrong_type: false,
    },
    Step {
        op: Op::Lock,
        m: Some(("fm", MutexKind::FastMutex)),
        irql: 2,
        r: CallResult::IrqlTooHigh,
        wrong_type: false,
    },
    Step {
        op: Op::Lock,
        m: Some(("fm", MutexKind::FastMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::Lock,
        m: Some(("km", MutexKind::KMutex)),
        irql: 1,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::DropSafe,
        m: Some(("fm", MutexKind::FastMutex)),
        irql: 2,
        r: CallResult::IrqlTooHigh,
        wrong_type: false,
    },
    Step {
        op: Op::DropSafe,
        m: Some(("fm", MutexKind::FastMutex)),
        irql: 1,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::New,
        m: Some(("fm2", MutexKind::FastMutex)),
        irql: 2,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::New,
        m: Some(("fm2", MutexKind::FastMutex)),
        irql: 3,
        r: CallResult::IrqlTooHigh,
        wrong_type: false,
    },
    Step {
        op: Op::Lock,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::DropSafe,
        m: Some(("km", MutexKind::KMutex)),
        irql: 3,
        r: CallResult::IrqlTooHigh,
        wrong_type: false,
    },
    Step {
        op: Op::DropSafe,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
];

/// The calls of `grt_errors`, in order.
pub const GRT_ERRORS: [Step; 17] = [
    Step {
        op: Op::GrtGet,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::GrtIsNull,
        wrong_type: false,
    },
    Step {
        op: Op::GrtRegister,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::GrtIsNull,
        wrong_type: false,
    },
    Step {
        op: Op::GrtInit,
        m: None,
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::GrtInit,
        m: None,
        irql: 0,
        r: CallResult::GrtAlreadyExists,
        wrong_type: false,
    },
    Step {
        op: Op::GrtGet,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::GrtIsEmpty,
        wrong_type: false,
    },
    Step {
        op: Op::GrtRegister,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::GrtGet,
        m: Some(("missing", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::KeyNotFound,
        wrong_type: false,
    },
    Step {
        op: Op::GrtGet,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::DowncastError,
        wrong_type: true,
    },
    Step {
        op: Op::GrtGet,
        m: Some(("km", MutexKind::FastMutex)),
        irql: 0,
        r: CallResult::DowncastError,
        wrong_type: false,
    },
    Step {
        op: Op::GrtGet,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::GrtRegisterChecked,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::KeyExists,
        wrong_type: false,
    },
    Step {
        op: Op::GrtRegister,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::GrtRegister,
        m: Some(("fm", MutexKind::FastMutex)),
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::GrtRegisterChecked,
        m: Some(("fm", MutexKind::FastMutex)),
        irql: 0,
        r: CallResult::KeyExists,
        wrong_type: false,
    },
    Step {
        op: Op::GrtDestroy,
        m: None,
        irql: 0,
        r: CallResult::Ok,
        wrong_type: false,
    },
    Step {
        op: Op::GrtGet,
        m: Some(("km", MutexKind::KMutex)),
        irql: 0,
        r: CallResult::GrtIsNull,
        wrong_type: false,
    },
    Step {
        op: Op::GrtDestroy,
        m: None,
        irql: 0,
        r: CallResult::GrtIsNull,
        wrong_type: false,
    },
];
