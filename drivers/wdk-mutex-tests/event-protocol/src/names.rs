//! The closed vocabularies of the protocol: mutex kinds, operations, results, outcomes, systems.
//!
//! Each enum maps to the exact spelling `PROTOCOL.md` gives (`Variant = "name"` below); all names are
//! valid protocol values.

use core::fmt;

/// Defines a closed vocabulary: the enum, its protocol spelling, and the reverse lookup.
macro_rules! names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The name as the protocol spells it.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }

            /// The value the protocol spells `name`, if any.
            #[must_use]
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $text => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The kind of a mutex under test (the `k` field).
    pub enum MutexKind {
        /// wdk-mutex `KMutex` (a `KMUTEX`), registered in `Grt` or not.
        KMutex = "kmutex",
        /// wdk-mutex `FastMutex` (a `FAST_MUTEX`), registered in `Grt` or not.
        FastMutex = "fast_mutex",
        /// Linux `struct mutex` behind the checked wrapper.
        Mutex = "mutex",
    }
}

names! {
    /// The API operation a `call` event reports (the `op` field).
    pub enum Op {
        /// `KMutex::new` / `FastMutex::new`.
        New = "new",
        /// `lock`.
        Lock = "lock",
        /// A guard's `drop_safe`.
        DropSafe = "drop_safe",
        /// A guard's `Drop` (the guard leaving scope).
        Drop = "drop",
        /// `to_owned`.
        ToOwned = "to_owned",
        /// `to_owned_box`.
        ToOwnedBox = "to_owned_box",
        /// `Grt::init`.
        GrtInit = "grt_init",
        /// `Grt::register_kmutex` / `Grt::register_fast_mutex`.
        GrtRegister = "grt_register",
        /// `Grt::register_kmutex_checked` / `Grt::register_fast_mutex_checked`.
        GrtRegisterChecked = "grt_register_checked",
        /// `Grt::get_kmutex` / `Grt::get_fast_mutex`.
        GrtGet = "grt_get",
        /// `Grt::destroy`.
        GrtDestroy = "grt_destroy",
        /// A raw dispatcher wait, used by a negative control.
        Wait = "wait",
    }
}

names! {
    /// The result of a call (the `r` field): `Ok` or the error variant's name as wdk-mutex spells it.
    pub enum CallResult {
        /// The call succeeded (or, for a call without a result, returned).
        Ok = "Ok",
        /// `DriverMutexError::IrqlTooHigh`.
        IrqlTooHigh = "IrqlTooHigh",
        /// `DriverMutexError::IrqlNotAPCLevel`.
        IrqlNotAPCLevel = "IrqlNotAPCLevel",
        /// `DriverMutexError::PagedPoolAllocFailed`.
        PagedPoolAllocFailed = "PagedPoolAllocFailed",
        /// `GrtError::GrtAlreadyExists`.
        GrtAlreadyExists = "GrtAlreadyExists",
        /// `GrtError::GrtIsNull`.
        GrtIsNull = "GrtIsNull",
        /// `GrtError::GrtIsEmpty`.
        GrtIsEmpty = "GrtIsEmpty",
        /// `GrtError::KeyNotFound`.
        KeyNotFound = "KeyNotFound",
        /// `GrtError::KeyExists`.
        KeyExists = "KeyExists",
        /// `GrtError::DowncastError`.
        DowncastError = "DowncastError",
    }
}

names! {
    /// How a scenario ended (the `outcome` field of `scenario-end`).
    pub enum Outcome {
        /// The scenario ran to its end; vmtest judges it from the events.
        Done = "done",
        /// Not applicable on this OS or build; `msg` says why.
        Skipped = "skipped",
        /// The scenario could not run (an allocation or a thread creation failed); `msg` says why.
        Error = "error",
    }
}

names! {
    /// The operating system a driver runs on (the `os` field of `run-start`).
    pub enum Os {
        /// Windows.
        Windows = "windows",
        /// Linux.
        Linux = "linux",
    }
}

#[cfg(test)]
mod tests {
    use super::{CallResult, MutexKind, Op, Os, Outcome};
    use crate::is_valid_value;

    fn check<T: Copy + PartialEq + core::fmt::Debug>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        from_name: fn(&str) -> Option<T>,
    ) {
        for &value in all {
            let name = as_str(value);
            assert!(
                is_valid_value(name),
                "{name:?} is not a valid protocol value"
            );
            assert_eq!(from_name(name), Some(value));
        }
    }

    #[test]
    fn every_name_is_a_valid_value_and_maps_back() {
        check(MutexKind::ALL, MutexKind::as_str, MutexKind::from_name);
        check(Op::ALL, Op::as_str, Op::from_name);
        check(CallResult::ALL, CallResult::as_str, CallResult::from_name);
        check(Outcome::ALL, Outcome::as_str, Outcome::from_name);
        check(Os::ALL, Os::as_str, Os::from_name);
    }

    #[test]
    fn spellings_follow_the_protocol() {
        assert_eq!(MutexKind::FastMutex.as_str(), "fast_mutex");
        assert_eq!(Op::ToOwnedBox.as_str(), "to_owned_box");
        assert_eq!(Op::GrtRegisterChecked.as_str(), "grt_register_checked");
        assert_eq!(CallResult::IrqlNotAPCLevel.as_str(), "IrqlNotAPCLevel");
        assert_eq!(CallResult::ALL.len(), 10);
        assert_eq!(Op::ALL.len(), 12);
        assert_eq!(MutexKind::from_name("KMutex"), None);
        assert_eq!(std::format!("{}", Outcome::Skipped), "skipped");
    }
}
