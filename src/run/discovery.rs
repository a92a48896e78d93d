//! Tables found by `[tables_pattern]` while running: a periodic metadata
//! check finds topics of tables not merged yet, prepares their topics, adds
//! them to the worker and subscribes the group to them (a rebalance hands
//! their partitions out like any other).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use super::group::GroupConsumer;
use super::layout::prepare_table;
use super::pause::SourceControl;
use super::startup::{avro_startup, Probe};
use super::{RunError, Worker, TIMEOUT};
use crate::config::{Config, TableConfig, TablesPattern};
use crate::events::TableFound;

/// The periodic check for new tables.
pub(super) struct Discovery {
    pattern: TablesPattern,
    every: Duration,
    last: Instant,
    /// Tables merged already (configured, found at start-up or since).
    known: BTreeSet<String>,
}

impl Discovery {
    /// `None` without `[tables_pattern]`.
    pub(super) fn new(config: &Config, tables: &[TableConfig]) -> Option<Self> {
        let pattern = config.tables_pattern.clone()?;
        Some(Self {
            every: pattern.discovery_interval,
            pattern,
            last: Instant::now(),
            known: tables.iter().map(|t| t.name.clone()).collect(),
        })
    }
}

/// Every topic name in the cluster's metadata.
pub(super) fn topic_names<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
) -> Result<Vec<String>, RunError> {
    let md = consumer.fetch_metadata(None, TIMEOUT).map_err(|e| RunError::kafka("metadata of every topic", e))?;
    Ok(md.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name().to_string()).collect())
}

impl Worker {
    /// Looks for new tables when the interval is up; a failed look is
    /// logged and tried again at the next interval (the tables merged
    /// already go on).
    pub(super) fn discover_tables(&mut self, consumer: &GroupConsumer, control: &SourceControl) -> Result<(), RunError> {
        let Some(d) = &mut self.discovery else { return Ok(()) };
        if d.last.elapsed() < d.every {
            return Ok(());
        }
        d.last = Instant::now();
        let names = match topic_names(consumer) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("looking for new tables: {e}; trying again in {:?}", d.every);
                return Ok(());
            }
        };
        let found = d.pattern.discover(&names.iter().map(String::as_str).collect::<Vec<_>>(), &self.config.merge);
        let new: Vec<TableConfig> = found.into_iter().filter(|t| !d.known.contains(&t.name)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(RunError::NoRuntime)?;
        let kafka = Probe::new(&self.config)?;
        let mut added = Vec::new();
        for table in new {
            if self.tables.len() >= crate::config::MAX_TABLES {
                tracing::warn!(table = %table.name, limit = crate::config::MAX_TABLES, "more tables match the pattern than one process merges; not merging this one (narrow tables_pattern.allow or run another group)");
                if let Some(d) = &mut self.discovery {
                    d.known.insert(table.name.clone());
                }
                continue;
            }
            let layout = match runtime.block_on(prepare_table(&self.config, &table, &kafka, true)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(table = %table.name, "a new table's topics are not ready: {e}; trying again at the next check");
                    continue;
                }
            };
            let avro = if layout.config.uses_avro() { Some(avro_startup(&layout.original, &self.shutdown)?) } else { None };
            control.add_sources(layout.switches());
            let sources = layout.config.sources.len();
            self.add_table(layout, avro)?;
            TableFound { table: &table.name, sources, tables: self.tables.len() }.emit(&self.metrics);
            if let Some(d) = &mut self.discovery {
                d.known.insert(table.name.clone());
            }
            added.push(table.name);
        }
        if added.is_empty() {
            return Ok(());
        }
        let topics = self.subscribed_topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        // A new subscription rebalances the group: the revocation commits
        // the open cycle first, as on any rebalance.
        consumer.subscribe(&topics).map_err(|e| RunError::kafka("subscribe to the new tables' topics", e))?;
        Ok(())
    }
}
