//! The per-load event counter (`seq`).

use core::sync::atomic::{AtomicU64, Ordering};

/// A sequence-number source: an atomic counter whose first number is 1.
///
/// `seq` is one counter per driver load, incremented by one for every line the driver prints. Take
/// the number with [`Sequence::next`] at the moment the event happens: for `acquired` and `release`
/// while the mutex is held, so sorting a mutex's events by `seq` gives the true order of its
/// critical sections even when the lines come out of order.
#[derive(Debug)]
pub struct Sequence {
    next: AtomicU64,
}

/// The driver-wide sequence. A static starts at 1 on every load of the driver image.
pub static SEQUENCE: Sequence = Sequence::new();

impl Sequence {
    /// A sequence whose first number is 1.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            next: AtomicU64::new(1),
        }
    }

    /// The next number (an atomic fetch-add: no two callers get the same one).
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// How many numbers have been handed out (the last one, or 0 before the first).
    #[must_use]
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }

    /// Start again at 1 (for tests, or a driver that reruns itself without reloading).
    pub fn reset(&self) {
        self.next.store(1, Ordering::SeqCst);
    }
}

impl Default for Sequence {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{Sequence, SEQUENCE};
    use std::{sync::Arc, thread, vec::Vec};

    #[test]
    fn starts_at_one_and_counts() {
        let sequence = Sequence::new();
        assert_eq!(sequence.issued(), 0);
        assert_eq!(sequence.next(), 1);
        assert_eq!(sequence.next(), 2);
        assert_eq!(sequence.issued(), 2);
        sequence.reset();
        assert_eq!(sequence.next(), 1);
    }

    #[test]
    fn concurrent_callers_get_distinct_numbers() {
        let sequence = Arc::new(Sequence::new());
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let sequence = Arc::clone(&sequence);
                thread::spawn(move || (0..1000).map(|_| sequence.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=4000).collect::<Vec<_>>());
    }

    #[test]
    fn the_global_sequence_resets() {
        // The only test that touches the global, so parallel tests cannot interfere.
        SEQUENCE.reset();
        assert_eq!(SEQUENCE.next(), 1);
        SEQUENCE.reset();
        assert_eq!(SEQUENCE.issued(), 0);
    }
}
