//! What a key and a value may contain, and how text that does not fit is sanitized.

use core::fmt::{self, Write};

/// True if `c` may appear in a value: `[A-Za-z0-9_.:,+-]`.
#[must_use]
pub const fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | ',' | '+' | '-')
}

/// True if `value` is a valid protocol value: non-empty, `[A-Za-z0-9_.:,+-]+`.
#[must_use]
pub fn is_valid_value(value: &str) -> bool {
    !value.is_empty() && value.chars().all(is_value_char)
}

/// True if `key` is a valid protocol key: non-empty, `[a-z_]+`.
#[must_use]
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Writes a value, every character outside the value set replaced by `_`; an empty value as `-`.
pub(crate) struct Value<'a>(pub(crate) &'a str);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_char('-');
        }
        for c in self.0.chars() {
            f.write_char(if is_value_char(c) { c } else { '_' })?;
        }
        Ok(())
    }
}

/// Writes one part of a `name:value` scenario parameter: like [`Value`], and `:` `,` become `_`.
pub(crate) struct ParamPart<'a>(pub(crate) &'a str);

impl fmt::Display for ParamPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_char('-');
        }
        for c in self.0.chars() {
            let keep = is_value_char(c) && c != ':' && c != ',';
            f.write_char(if keep { c } else { '_' })?;
        }
        Ok(())
    }
}

/// The character `msg` text carries for `c`: control characters become spaces, non-ASCII `?`.
pub(crate) const fn msg_char(c: char) -> char {
    if c.is_ascii_control() {
        ' '
    } else if c.is_ascii() {
        c
    } else {
        '?'
    }
}

#[cfg(test)]
mod tests {
    use super::{is_valid_key, is_valid_value, msg_char, ParamPart, Value};
    use std::format;

    #[test]
    fn values() {
        assert!(is_valid_value("threads:3,iterations:500"));
        assert!(is_valid_value("0.1.0+abc-1"));
        assert!(!is_valid_value(""));
        assert!(!is_valid_value("a b"));
        assert!(!is_valid_value("a=b"));
        assert!(!is_valid_value("é"));
    }

    #[test]
    fn keys() {
        assert!(is_valid_key("thread_end"));
        assert!(!is_valid_key("Seq"));
        assert!(!is_valid_key("t1"));
        assert!(!is_valid_key(""));
    }

    #[test]
    fn sanitizing() {
        assert_eq!(format!("{}", Value("a b=c\u{e9}")), "a_b_c_");
        assert_eq!(format!("{}", Value("")), "-");
        assert_eq!(format!("{}", Value("k:v,w")), "k:v,w");
        assert_eq!(format!("{}", ParamPart("k:v,w")), "k_v_w");
        assert_eq!(msg_char('\r'), ' ');
        assert_eq!(msg_char('\0'), ' ');
        assert_eq!(msg_char('\u{e9}'), '?');
        assert_eq!(msg_char('='), '=');
    }
}
