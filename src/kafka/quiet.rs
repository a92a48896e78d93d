//! librdkafka's log lines and error events, with the expected ones quiet.
//!
//! A clean run must not log warnings or errors: an operator learns to
//! ignore a log that cries wolf. librdkafka reports some normal conditions
//! loudly: reaching the end of a partition (restores ask for it), a
//! transaction coordinator still loading right after a broker start (it
//! retries by itself), and a property meant for another kind of client
//! (Tributary hands `[kafka.properties]` to every client it makes). Those go
//! to DEBUG; everything else keeps librdkafka's level.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

/// A client context that logs through [`log`] and [`error`].
#[derive(Debug, Default, Clone, Copy)]
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// True for librdkafka log lines that report an expected condition.
fn expected(fac: &str, message: &str) -> bool {
    (fac == "CONFWARN" && message.contains("will be ignored by this"))
        || message.contains("Coordinator load in progress")
        || message.contains("COORDINATOR_LOAD_IN_PROGRESS")
        || message.contains("reached end of partition")
}

/// Logs one librdkafka log line (`ClientContext::log`).
pub fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    if expected(fac, message) {
        tracing::debug!(target: "librdkafka", "{fac} {message}");
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{fac} {message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac} {message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
    }
}

/// [`log`] for a client that reports an unreachable cluster itself (the
/// sink, `load`): librdkafka's per-connection failure lines go to DEBUG.
pub fn log_connection_failures_quietly(level: RDKafkaLogLevel, fac: &str, message: &str) {
    if fac == "FAIL" {
        tracing::debug!(target: "librdkafka", "{fac} {message}");
    } else {
        log(level, fac, message);
    }
}

/// True for the errors librdkafka raises, on every retry, while no broker
/// can be reached.
pub fn is_unreachable(error: &KafkaError) -> bool {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure))
}

/// Logs one librdkafka error event (`ClientContext::error`).
pub fn error(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if matches!(code, Some(RDKafkaErrorCode::PartitionEOF | RDKafkaErrorCode::CoordinatorLoadInProgress)) || expected("", reason)
    {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
    } else {
        tracing::error!(target: "librdkafka", "{error}: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_conditions_are_recognised() {
        assert!(expected(
            "CONFWARN",
            "Configuration property message.timeout.ms is a producer property and will be ignored by this consumer instance"
        ));
        assert!(expected(
            "TXNERR",
            "Failed to acquire transactional PID from broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying"
        ));
        assert!(expected("", "Fetch from broker 1 reached end of partition at offset 0 (HighwaterMark 1)"));
        assert!(!expected("FAIL", "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"));
    }
}
