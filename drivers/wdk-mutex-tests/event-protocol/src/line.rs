//! A fixed-size line buffer that events are formatted into, without allocating.

use core::ffi::CStr;
use core::fmt::{self, Write};

use crate::event::Event;
use crate::value::msg_char;
use crate::{MAX_LINE, PREFIX};

/// Why an event could not be formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// The line without its `msg` would exceed [`MAX_LINE`] bytes or the buffer.
    TooLong,
    /// The buffer holds a NUL byte (written through its [`fmt::Write`] impl), so it is no C string.
    InteriorNul,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "the event line is longer than the protocol allows",
            Self::InteriorNul => "the line buffer holds a NUL byte",
        })
    }
}

/// A line of at most `min(N - 2, MAX_LINE)` bytes of text in a `[u8; N]`.
///
/// The two bytes held back let [`LineBuf::c_line`] always append a newline and a NUL, so
/// `LineBuf<{ MAX_LINE + 2 }>` ([`EventLine`]) holds any protocol line. It implements
/// [`fmt::Write`]; a write that does not fit fails and leaves the buffer as it was.
#[derive(Clone)]
pub struct LineBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

/// A buffer that holds any protocol line plus its newline and NUL: 402 bytes, fine on a kernel stack.
pub type EventLine = LineBuf<{ MAX_LINE + 2 }>;

impl<const N: usize> LineBuf<N> {
    /// How many bytes of text the buffer takes.
    pub const CAPACITY: usize = if N - 2 < MAX_LINE { N - 2 } else { MAX_LINE };

    /// An empty buffer. `N` must be at least 2 (checked at compile time).
    #[must_use]
    pub const fn new() -> Self {
        const { assert!(N >= 2, "a LineBuf needs room for a newline and a NUL") };
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The text written so far.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s and ASCII characters are ever copied in, so this cannot fail; the
        // fallback keeps the crate free of panics and `unsafe`.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    /// The text's length in bytes.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True if nothing has been written.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Formats `event` with sequence number `seq` as its canonical line (no line ending), replacing
    /// what the buffer held, and returns the line.
    ///
    /// Values are sanitized (see the crate documentation); a `msg` is cut to fit. On error the
    /// buffer is left empty.
    ///
    /// # Errors
    ///
    /// [`FormatError::TooLong`] when the line without its `msg` does not fit.
    pub fn format(&mut self, seq: u64, event: &Event<'_>) -> Result<&str, FormatError> {
        self.clear();
        let written = write!(self, "{PREFIX}seq={seq} ev={}", event.ev())
            .and_then(|()| event.write_fields(self))
            .and_then(|()| match event.msg() {
                Some(_) => self.write_str(" msg="),
                None => Ok(()),
            });
        if written.is_err() {
            self.clear();
            return Err(FormatError::TooLong);
        }
        if let Some(msg) = event.msg() {
            self.push_msg(msg);
        }
        Ok(self.as_str())
    }

    /// Appends sanitized `msg` text, cut at the capacity, without trailing whitespace.
    fn push_msg(&mut self, msg: &str) {
        let start = self.len;
        for c in msg.chars() {
            if self.len == Self::CAPACITY {
                break;
            }
            // `msg_char` returns ASCII only, so each character is one byte.
            self.bytes[self.len] = msg_char(c) as u8;
            self.len += 1;
        }
        while self.len > start && self.bytes[self.len - 1].is_ascii_whitespace() {
            self.len -= 1;
        }
    }

    /// The line followed by a newline, as a NUL-terminated C string: what to hand to
    /// `DbgPrint("%s", ...)` or `printk("%s", ...)`.
    ///
    /// # Errors
    ///
    /// [`FormatError::InteriorNul`] if a NUL byte was written into the buffer through
    /// [`fmt::Write`] (never the case after [`LineBuf::format`]).
    pub fn c_line(&mut self) -> Result<&CStr, FormatError> {
        self.bytes[self.len] = b'\n';
        self.bytes[self.len + 1] = 0;
        CStr::from_bytes_with_nul(&self.bytes[..self.len + 2]).map_err(|_| FormatError::InteriorNul)
    }
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > Self::CAPACITY {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for LineBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LineBuf").field(&self.as_str()).finish()
    }
}

impl<const N: usize> fmt::Display for LineBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{EventLine, FormatError, LineBuf};
    use crate::{Event, MutexKind, Outcome, MAX_LINE};
    use core::fmt::Write;
    use std::{format, string::String};

    fn end(msg: &str) -> Event<'_> {
        Event::ScenarioEnd {
            sc: "s",
            outcome: Outcome::Skipped,
            msg: Some(msg),
        }
    }

    #[test]
    fn c_line_appends_newline_and_nul() {
        let mut line = EventLine::new();
        let text = String::from(line.format(7, &Event::RunEnd { scenarios: 2 }).unwrap());
        assert_eq!(text, "VMTEST1 seq=7 ev=run-end scenarios=2");
        let c_line = line.c_line().unwrap();
        assert_eq!(c_line.to_bytes_with_nul(), format!("{text}\n\0").as_bytes());
        // c_line does not change the text.
        assert_eq!(line.as_str(), text);
    }

    #[test]
    fn msg_is_sanitized_and_trimmed() {
        let mut line = EventLine::new();
        let text = line.format(1, &end("a\tb\r\n caf\u{e9}  \r\n")).unwrap();
        assert_eq!(
            text,
            "VMTEST1 seq=1 ev=scenario-end sc=s outcome=skipped msg=a b   caf?"
        );
    }

    #[test]
    fn msg_that_would_not_fit_is_cut_at_max_line() {
        let mut line = EventLine::new();
        let head = line.format(1, &end("")).unwrap().len();
        let long = "x".repeat(1000);
        let text = line.format(1, &end(&long)).unwrap();
        assert_eq!(text.len(), MAX_LINE);
        assert_eq!(&text[head..], "x".repeat(MAX_LINE - head));
        // When the cut falls right after a space, the trailing space is dropped too.
        let spaced = format!("{} tail", "y".repeat(MAX_LINE - head - 1));
        let text = line.format(1, &end(&spaced)).unwrap();
        assert_eq!(text.len(), MAX_LINE - 1);
        assert!(text.ends_with('y'));
    }

    #[test]
    fn a_line_too_long_without_msg_is_an_error() {
        let name = "n".repeat(MAX_LINE);
        let mut line = EventLine::new();
        let event = Event::Mutex {
            sc: &name,
            m: "m",
            k: MutexKind::KMutex,
        };
        assert_eq!(line.format(1, &event), Err(FormatError::TooLong));
        assert!(line.is_empty());
    }

    #[test]
    fn a_small_buffer_limits_the_line() {
        let mut line = LineBuf::<20>::new();
        assert_eq!(LineBuf::<20>::CAPACITY, 18);
        assert_eq!(
            line.format(1, &Event::RunEnd { scenarios: 1 }),
            Err(FormatError::TooLong)
        );
        assert!(write!(line, "{}", "z".repeat(18)).is_ok());
        assert!(write!(line, "z").is_err());
        assert_eq!(line.len(), 18);
        assert!(line.c_line().is_ok());
        assert_eq!(EventLine::CAPACITY, MAX_LINE);
        assert_eq!(LineBuf::<1000>::CAPACITY, MAX_LINE);
    }

    #[test]
    fn a_nul_written_through_fmt_write_is_reported() {
        let mut line = EventLine::new();
        line.write_str("a\0b").unwrap();
        assert_eq!(line.c_line(), Err(FormatError::InteriorNul));
    }
}
