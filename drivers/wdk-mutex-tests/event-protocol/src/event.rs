//! The events of the protocol, one variant per `ev`, with their required and optional keys.

use core::fmt::{self, Write};

use crate::names::{CallResult, MutexKind, Op, Os, Outcome};
use crate::value::{ParamPart, Value};
use crate::PROTOCOL_VERSION;

/// The value of a scenario parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamValue<'a> {
    /// A count, written in decimal.
    Int(u64),
    /// A word; sanitized like every value, and `:` `,` become `_`.
    Text(&'a str),
}

/// One scenario parameter, written `name:value` in the `params` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The parameter's name, e.g. `threads`.
    pub name: &'a str,
    /// Its value.
    pub value: ParamValue<'a>,
}

impl<'a> Param<'a> {
    /// A numeric parameter, e.g. `Param::int("threads", 3)` for `threads:3`.
    #[must_use]
    pub const fn int(name: &'a str, value: u64) -> Self {
        Self {
            name,
            value: ParamValue::Int(value),
        }
    }

    /// A textual parameter, e.g. `Param::text("kind", "kmutex")` for `kind:kmutex`.
    #[must_use]
    pub const fn text(name: &'a str, value: &'a str) -> Self {
        Self {
            name,
            value: ParamValue::Text(value),
        }
    }
}

/// One event. Field names are the protocol's keys; `Option` fields are its optional keys, written
/// only when `Some`. Every event is written with its keys in the order declared here.
///
/// Integer fields are written in decimal. `t` is the thread index within the scenario (the thread
/// running the scenario is 0), `irql` the IRQL observed at the call, `depth` the holder's recursion
/// depth (1 for a first acquisition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// `run-start`: the driver is loaded, before any scenario. `proto=1` is always written.
    RunStart {
        /// The driver's name.
        driver: &'a str,
        /// The operating system.
        os: Option<Os>,
        /// A version or commit.
        build: Option<&'a str>,
    },
    /// `scenario-start`: a scenario begins. An empty `params` is written `-`.
    ScenarioStart {
        /// The scenario's name.
        sc: &'a str,
        /// Its parameters, written `name:value` joined by commas.
        params: &'a [Param<'a>],
    },
    /// `mutex`: a mutex under test is created.
    Mutex {
        /// The scenario's name.
        sc: &'a str,
        /// The mutex's name within the scenario.
        m: &'a str,
        /// Its kind.
        k: MutexKind,
    },
    /// `acquire`: a thread asks for a lock (before the call).
    Acquire {
        /// The scenario's name.
        sc: &'a str,
        /// The thread index.
        t: u32,
        /// The mutex's name.
        m: &'a str,
        /// Its kind.
        k: MutexKind,
        /// The IRQL at the call.
        irql: u8,
    },
    /// `acquired`: the lock is held. Take `seq` while holding it.
    Acquired {
        /// The scenario's name.
        sc: &'a str,
        /// The thread index.
        t: u32,
        /// The mutex's name.
        m: &'a str,
        /// Its kind.
        k: MutexKind,
        /// The IRQL now.
        irql: u8,
        /// The recursion depth after acquiring.
        depth: Option<u32>,
    },
    /// `release`: about to release. Take `seq` while still holding the lock.
    Release {
        /// The scenario's name.
        sc: &'a str,
        /// The thread index.
        t: u32,
        /// The mutex's name.
        m: &'a str,
        /// Its kind.
        k: MutexKind,
        /// The IRQL at the release.
        irql: u8,
        /// The recursion depth before releasing.
        depth: Option<u32>,
    },
    /// `call`: an API call returned. Give `m` and `k` together, or neither.
    Call {
        /// The scenario's name.
        sc: &'a str,
        /// The thread index.
        t: u32,
        /// The operation.
        op: Op,
        /// The mutex the call was about.
        m: Option<&'a str>,
        /// Its kind.
        k: Option<MutexKind>,
        /// The IRQL observed at the call.
        irql: u8,
        /// The result.
        r: CallResult,
    },
    /// `counter`: a scenario's final counter value.
    Counter {
        /// The scenario's name.
        sc: &'a str,
        /// The mutex (or value) the counter belongs to.
        m: &'a str,
        /// The value found.
        value: u64,
        /// The value expected.
        expected: u64,
    },
    /// `thread-end`: a worker thread finished its loop.
    ThreadEnd {
        /// The scenario's name.
        sc: &'a str,
        /// The thread index.
        t: u32,
        /// How many iterations it completed.
        iterations: u64,
    },
    /// `scenario-end`: a scenario ends; `msg` is written last, as free text.
    ScenarioEnd {
        /// The scenario's name.
        sc: &'a str,
        /// How it ended.
        outcome: Outcome,
        /// Why (for `skipped` and `error`).
        msg: Option<&'a str>,
    },
    /// `run-end`: every requested scenario has ended.
    RunEnd {
        /// How many scenarios ran.
        scenarios: u64,
    },
}

impl Event<'_> {
    /// The protocol's name for this event (the `ev` field).
    #[must_use]
    pub const fn ev(&self) -> &'static str {
        match self {
            Self::RunStart { .. } => "run-start",
            Self::ScenarioStart { .. } => "scenario-start",
            Self::Mutex { .. } => "mutex",
            Self::Acquire { .. } => "acquire",
            Self::Acquired { .. } => "acquired",
            Self::Release { .. } => "release",
            Self::Call { .. } => "call",
            Self::Counter { .. } => "counter",
            Self::ThreadEnd { .. } => "thread-end",
            Self::ScenarioEnd { .. } => "scenario-end",
            Self::RunEnd { .. } => "run-end",
        }
    }

    /// The free-text `msg`, if the event carries one.
    #[must_use]
    pub const fn msg(&self) -> Option<&str> {
        match self {
            Self::ScenarioEnd { msg, .. } => *msg,
            _ => None,
        }
    }

    /// Writes the event's `key=value` fields except `seq`, `ev` and `msg`, each preceded by a space.
    pub(crate) fn write_fields<W: Write>(&self, out: &mut W) -> fmt::Result {
        match *self {
            Self::RunStart { driver, os, build } => {
                write!(out, " driver={} proto={PROTOCOL_VERSION}", Value(driver))?;
                if let Some(os) = os {
                    write!(out, " os={os}")?;
                }
                if let Some(build) = build {
                    write!(out, " build={}", Value(build))?;
                }
                Ok(())
            }
            Self::ScenarioStart { sc, params } => {
                write!(out, " sc={} params=", Value(sc))?;
                write_params(out, params)
            }
            Self::Mutex { sc, m, k } => write!(out, " sc={} m={} k={k}", Value(sc), Value(m)),
            Self::Acquire { sc, t, m, k, irql } => {
                write!(
                    out,
                    " sc={} t={t} m={} k={k} irql={irql}",
                    Value(sc),
                    Value(m)
                )
            }
            Self::Acquired {
                sc,
                t,
                m,
                k,
                irql,
                depth,
            }
            | Self::Release {
                sc,
                t,
                m,
                k,
                irql,
                depth,
            } => {
                write!(
                    out,
                    " sc={} t={t} m={} k={k} irql={irql}",
                    Value(sc),
                    Value(m)
                )?;
                if let Some(depth) = depth {
                    write!(out, " depth={depth}")?;
                }
                Ok(())
            }
            Self::Call {
                sc,
                t,
                op,
                m,
                k,
                irql,
                r,
            } => {
                write!(out, " sc={} t={t} op={op}", Value(sc))?;
                if let Some(m) = m {
                    write!(out, " m={}", Value(m))?;
                }
                if let Some(k) = k {
                    write!(out, " k={k}")?;
                }
                write!(out, " irql={irql} r={r}")
            }
            Self::Counter {
                sc,
                m,
                value,
                expected,
            } => write!(
                out,
                " sc={} m={} value={value} expected={expected}",
                Value(sc),
                Value(m)
            ),
            Self::ThreadEnd { sc, t, iterations } => {
                write!(out, " sc={} t={t} iterations={iterations}", Value(sc))
            }
            Self::ScenarioEnd { sc, outcome, .. } => {
                write!(out, " sc={} outcome={outcome}", Value(sc))
            }
            Self::RunEnd { scenarios } => write!(out, " scenarios={scenarios}"),
        }
    }
}

/// Writes `params`: `name:value` pairs joined by commas, or `-` when there are none.
fn write_params<W: Write>(out: &mut W, params: &[Param<'_>]) -> fmt::Result {
    if params.is_empty() {
        return out.write_char('-');
    }
    for (index, param) in params.iter().enumerate() {
        if index > 0 {
            out.write_char(',')?;
        }
        write!(out, "{}:", ParamPart(param.name))?;
        match param.value {
            ParamValue::Int(value) => write!(out, "{value}")?,
            ParamValue::Text(text) => write!(out, "{}", ParamPart(text))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Event, Param};
    use crate::{CallResult, MutexKind, Op, Outcome, EVENT_NAMES};
    use std::{string::String, vec::Vec};

    fn fields(event: &Event<'_>) -> String {
        let mut out = String::new();
        event.write_fields(&mut out).unwrap();
        out
    }

    #[test]
    fn ev_names_are_the_protocols() {
        let events = [
            Event::RunStart {
                driver: "d",
                os: None,
                build: None,
            },
            Event::ScenarioStart {
                sc: "s",
                params: &[],
            },
            Event::Mutex {
                sc: "s",
                m: "m",
                k: MutexKind::KMutex,
            },
            Event::Acquire {
                sc: "s",
                t: 0,
                m: "m",
                k: MutexKind::KMutex,
                irql: 0,
            },
            Event::Acquired {
                sc: "s",
                t: 0,
                m: "m",
                k: MutexKind::KMutex,
                irql: 0,
                depth: None,
            },
            Event::Release {
                sc: "s",
                t: 0,
                m: "m",
                k: MutexKind::KMutex,
                irql: 0,
                depth: None,
            },
            Event::Call {
                sc: "s",
                t: 0,
                op: Op::New,
                m: None,
                k: None,
                irql: 0,
                r: CallResult::Ok,
            },
            Event::Counter {
                sc: "s",
                m: "m",
                value: 1,
                expected: 1,
            },
            Event::ThreadEnd {
                sc: "s",
                t: 0,
                iterations: 1,
            },
            Event::ScenarioEnd {
                sc: "s",
                outcome: Outcome::Done,
                msg: None,
            },
            Event::RunEnd { scenarios: 0 },
        ];
        let names: Vec<&str> = events.iter().map(Event::ev).collect();
        assert_eq!(names, EVENT_NAMES);
    }

    #[test]
    fn params() {
        let none = Event::ScenarioStart {
            sc: "s",
            params: &[],
        };
        assert_eq!(fields(&none), " sc=s params=-");
        let some = [
            Param::int("threads", 3),
            Param::text("kind", "fast_mutex"),
            Param::text("odd", "a:b,c d"),
        ];
        let event = Event::ScenarioStart {
            sc: "s",
            params: &some,
        };
        assert_eq!(
            fields(&event),
            " sc=s params=threads:3,kind:fast_mutex,odd:a_b_c_d"
        );
    }

    #[test]
    fn optional_keys_are_written_only_when_given() {
        let call = Event::Call {
            sc: "s",
            t: 1,
            op: Op::DropSafe,
            m: Some("km"),
            k: Some(MutexKind::KMutex),
            irql: 15,
            r: CallResult::IrqlTooHigh,
        };
        assert_eq!(
            fields(&call),
            " sc=s t=1 op=drop_safe m=km k=kmutex irql=15 r=IrqlTooHigh"
        );
        let release = Event::Release {
            sc: "s",
            t: 0,
            m: "m",
            k: MutexKind::FastMutex,
            irql: 1,
            depth: None,
        };
        assert_eq!(fields(&release), " sc=s t=0 m=m k=fast_mutex irql=1");
    }

    #[test]
    fn msg_is_not_a_field() {
        let end = Event::ScenarioEnd {
            sc: "s",
            outcome: Outcome::Error,
            msg: Some("no memory"),
        };
        assert_eq!(fields(&end), " sc=s outcome=error");
        assert_eq!(end.msg(), Some("no memory"));
    }
}
