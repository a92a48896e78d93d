//! How long to wait between tries of something that may work later (the
//! schema registry coming back, a broker answering). One rule for every
//! retry loop: the first wait is `initial`, each next one `factor` times the
//! last, never more than `max`. No jitter: the processes that retry are few
//! and retry different things, so they do not stampede one server in step,
//! and a fixed sequence keeps the waits predictable in logs and tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The waits of one retry loop: `initial`, then `factor` times the previous
/// wait, capped at `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    factor: u32,
    /// Waits handed out since the last success.
    attempts: u32,
}

/// How often [`sleep`] looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

impl Backoff {
    /// `factor` 1 waits `initial` every time; `max` below `initial` caps the
    /// first wait too.
    pub(crate) fn new(initial: Duration, max: Duration, factor: u32) -> Self {
        Self { initial, max, factor, attempts: 0 }
    }

    /// The wait before retry `attempt` (0-based), without changing the state.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.factor.checked_pow(attempt).and_then(|growth| self.initial.checked_mul(growth)).map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before the next try; the one after it grows.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let wait = self.delay(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        wait
    }

    /// How many waits were handed out since the start or the last
    /// [`reset`](Self::reset): the number of failed tries so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// A try succeeded: the next failure waits `initial` again.
    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// Sleeps for `wait`, or less if `stop` is set meanwhile (checked every
/// 50 ms): a stopping process does not sit out a long backoff.
pub(crate) fn sleep(wait: Duration, stop: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(1000), 2);
        let waits: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(b.attempts(), 6);
        assert_eq!(b.delay(3), ms(800), "delay(n) is the n-th wait of a fresh sequence");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(ms(250), ms(8000), 2);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(), ms(250));
    }

    #[test]
    fn never_overflows_and_never_exceeds_the_cap() {
        let b = Backoff::new(ms(100), Duration::from_secs(30), 2);
        for attempt in [16, 17, 31, 32, 63, 64, 1000, u32::MAX] {
            assert_eq!(b.delay(attempt), Duration::from_secs(30), "attempt {attempt}");
        }
        let mut b = Backoff::new(Duration::MAX, Duration::MAX, 10);
        b.attempts = u32::MAX;
        assert_eq!(b.next_delay(), Duration::MAX);
        assert_eq!(b.attempts(), u32::MAX);
        assert_eq!(Backoff::new(ms(500), ms(300), 2).delay(0), ms(300), "the cap bounds the first wait too");
    }

    #[test]
    fn factor_one_waits_the_same_every_time() {
        let mut b = Backoff::new(ms(20), ms(1000), 1);
        assert!((0..50).all(|_| b.next_delay() == ms(20)));
    }

    #[test]
    fn sleep_waits_the_delay_or_stops_early() {
        let start = Instant::now();
        sleep(ms(30), &AtomicBool::new(false));
        assert!(start.elapsed() >= ms(30));

        let start = Instant::now();
        sleep(Duration::from_secs(3600), &AtomicBool::new(true));
        assert!(start.elapsed() < Duration::from_secs(60), "a stop flag ends the wait");
    }
}
