//! The processing thread: poll, process, end cycles on time or size, back
//! off after failed cycles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::group::{is_fatal_consumer_error, GroupConsumer};
use super::pause::SourceControl;
use super::{RunError, Worker, MAX_CYCLE_EVENTS};

/// How long `/state/{key}` waits for the processing thread to let go of the
/// worker between two steps of a cycle.
pub(super) const QUERY_WAIT: Duration = Duration::from_secs(3);

pub(super) fn main_loop(
    consumer: &GroupConsumer,
    worker: &Mutex<Worker>,
    control: &SourceControl,
    interval: Duration,
    shutdown: &AtomicBool,
) -> Result<(), RunError> {
    while !shutdown.load(Ordering::Relaxed) {
        // A pause or resume from the admin port, between two steps: the
        // open cycle goes on with what it has.
        if control.pending() {
            if let Err(e) = control.apply(consumer) {
                tracing::warn!("applying a source pause or resume: {e}; retrying");
            }
        }
        let msg = consumer.poll(Duration::from_millis(20));
        let mut w = worker.lock().expect("worker");
        match w.fatal.take() {
            Some(RunError::Interrupted) => break,
            Some(e) => return Err(e),
            None => {}
        }
        let step = match msg {
            Some(Ok(m)) => match w.process(&m) {
                // A produce failure (e.g. the transaction entered an abortable
                // state): abort, rewind and go on; `abort` stops on fatal ones.
                Err(RunError::Kafka { source, .. }) => w.abort(consumer, source),
                Err(RunError::RegistryUnavailable { source, .. }) => w.registry_wait(consumer, &source.to_string(), shutdown),
                other => other,
            },
            Some(Err(e)) if is_fatal_consumer_error(&e) => Err(RunError::FatalConsumer { source: e }),
            Some(Err(e)) => {
                tracing::warn!("consumer: {e}");
                Ok(())
            }
            None => Ok(()),
        };
        let step = step.and_then(|()| if w.last_sweep.elapsed() >= w.sweep_interval() { w.sweep_tombstones() } else { Ok(()) });
        let step = step.and_then(|()| w.discover_tables(consumer, control));
        w.purge.tick();
        // A cycle ends on the interval, or when it holds enough events or
        // bytes that a longer transaction would only grow the producer's
        // queue and the memory held for it.
        let due = w.last_commit.elapsed() >= interval
            || w.cycle_events >= MAX_CYCLE_EVENTS
            || w.cycle_bytes >= w.config.runtime.max_cycle_bytes;
        let step = step.and_then(|()| if due { w.commit(consumer) } else { Ok(()) });
        if matches!(step, Err(RunError::Interrupted)) {
            w.discard();
            break;
        }
        // Cycles failing in a row (a produce error that repeats, the broker
        // away): wait before the next attempt instead of spinning.
        if step.is_ok() && w.failed_cycles > 0 && !w.txn_open {
            let wait = Duration::from_millis(100u64 << w.failed_cycles.min(7)).min(Duration::from_secs(10));
            tracing::debug!(failed = w.failed_cycles, wait_ms = wait.as_millis() as u64, "waiting before the next cycle");
            drop(w);
            let until = Instant::now() + wait;
            while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
                // Keep serving the group (heartbeats are librdkafka's; the
                // poll keeps max.poll.interval.ms satisfied) without taking records.
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        if let Err(e) = step {
            // Whatever the open cycle holds must not be committed by the
            // revocation that leaving the group triggers.
            w.discard();
            return Err(e);
        }
    }
    let mut w = worker.lock().expect("worker");
    if let Err(e) = w.commit(consumer) {
        w.discard();
        return Err(e);
    }
    let c = &w.counters;
    tracing::info!(
        consumed = c.consumed,
        emitted = c.emitted,
        stale_or_duplicate = c.dropped,
        ignored_tombstones = c.ignored,
        dead_letters = c.dead_letters,
        commits = c.commits,
        aborts = c.aborts,
        states_from_cycle = c.state_reads.cycle,
        states_from_cache = c.state_reads.cache,
        states_from_store = c.state_reads.store,
        "stopped"
    );
    Ok(())
}
