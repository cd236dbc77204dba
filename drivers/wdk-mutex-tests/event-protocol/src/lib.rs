//! Formats events of the vmtest event protocol, version 1 (`drivers/PROTOCOL.md`), into a
//! caller-provided fixed buffer.
//!
//! The crate is `no_std`, allocates nothing, has no dependencies and no `unsafe`, so a kernel driver
//! can format an event at any IRQL it is allowed to print at. A driver:
//!
//! 1. takes the event's sequence number from [`SEQUENCE`] at the right moment (for
//!    [`Event::Acquired`] and [`Event::Release`]: while it holds the mutex),
//! 2. formats the event into an [`EventLine`] with [`LineBuf::format`],
//! 3. prints [`LineBuf::c_line`] (the line, a newline and a NUL) with `DbgPrint("%s", ...)` or
//!    `printk("%s", ...)`, never as the format string itself.
//!
//! ```
//! use vmtest_event_protocol::{Event, EventLine, MutexKind, Sequence};
//!
//! let sequence = Sequence::new();
//! let mut line = EventLine::new();
//! let event = Event::Acquired {
//!     sc: "kmutex_contention",
//!     t: 0,
//!     m: "counter",
//!     k: MutexKind::KMutex,
//!     irql: 0,
//!     depth: Some(1),
//! };
//! assert_eq!(
//!     line.format(sequence.next(), &event),
//!     Ok("VMTEST1 seq=1 ev=acquired sc=kmutex_contention t=0 m=counter k=kmutex irql=0 depth=1")
//! );
//! // What DbgPrint("%s", ...) gets: the same bytes, a newline, a NUL.
//! let c_line = line.c_line().unwrap();
//! assert!(c_line.to_bytes().ends_with(b" depth=1\n"));
//! ```
//!
//! # Values are sanitized, not rejected
//!
//! The protocol allows values made of `[A-Za-z0-9_.:,+-]` only. Every value the crate writes is
//! sanitized rather than rejected, because a driver must always print its line (a missing line is
//! itself reported, as a gap in the sequence numbers):
//!
//! - in a value, every character outside that set becomes `_`, and an empty value becomes `-`;
//! - in a scenario parameter (`name:value` inside `params`), `:` and `,` also become `_`, so the
//!   pairs stay parseable;
//! - in `msg` (free text, the last field), control characters become spaces, non-ASCII characters
//!   become `?`, trailing whitespace is dropped (consumers strip it too), and the text is cut so the
//!   whole line stays within [`MAX_LINE`] bytes.
//!
//! The only error left is a line that would exceed [`MAX_LINE`] bytes (or the buffer) without its
//! `msg`: [`FormatError::TooLong`].

#![no_std]

#[cfg(test)]
extern crate std;

mod event;
mod line;
mod names;
mod sequence;
mod value;

pub use event::{Event, Param, ParamValue};
pub use line::{EventLine, FormatError, LineBuf};
pub use names::{CallResult, MutexKind, Op, Os, Outcome};
pub use sequence::{Sequence, SEQUENCE};
pub use value::{is_valid_key, is_valid_value, is_value_char};

/// The protocol prefix, its name and version followed by one space.
pub const PREFIX: &str = "VMTEST1 ";

/// The protocol version this crate formats (the `proto` field of `run-start`).
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line the protocol allows, in bytes, without its line ending.
pub const MAX_LINE: usize = 400;

/// Every `ev` name of protocol version 1, in the order of `PROTOCOL.md`'s table.
pub const EVENT_NAMES: [&str; 11] = [
    "run-start",
    "scenario-start",
    "mutex",
    "acquire",
    "acquired",
    "release",
    "call",
    "counter",
    "thread-end",
    "scenario-end",
    "run-end",
];
