//! `tributary demo`: the whole pipeline on one machine, with nothing installed.
//!
//! librdkafka's mock cluster stands in for Kafka (in process), simulated
//! source databases write Debezium JSON change events of one `customers`
//! table to their own topics, `tributary run` merges them (through
//! [`crate::run::run_with`], topics created here because the mock has no
//! admin API) and `tributary sink` materializes the merged topic into an
//! SQLite file. At the end a short report says what happened.
//!
//! Two scenarios ([`Scenario`]):
//! - `regions` (the default, module `regions`): three regions replicate
//!   each other's writes with a lag, like a multi-primary database, carrying
//!   version vectors in a `_vv` column, so some edits are causally later and
//!   some concurrent; the configured policy resolves the conflicts.
//! - `aggregation` (module `aggregation`): a CRM, billing and two regions'
//!   login services each own part of a customer, and every column resolves
//!   by its own rule (`owner`, `max`, `min`, `union`, `counter`); the report
//!   says which write decided each column and why, and checks the output
//!   against replay and the counter against the systems' own databases.
//!
//! The other modules: `scenario` (what differs between the scenarios),
//! `sources` (the simulated databases' writes produced to their topics),
//! `observe` (metrics read in process from the processor's registry, its
//! state store, the SQLite file, the checks, the progress line) and
//! `report`.

mod aggregation;
mod observe;
mod regions;
mod report;
mod scenario;
mod sources;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;

use crate::metrics::Metrics;
use crate::run::RunOptions;

pub use scenario::Scenario;
use sources::{simulate, LiveCounts, Produced};

/// Merge policy of the `regions` scenario (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoPolicy {
    /// The latest source commit time wins.
    Lww,
    /// The larger source priority wins, then the latest commit time.
    SourcePriority,
    /// Column by column: each column takes its latest write.
    FieldLww,
}

impl DemoPolicy {
    /// Every policy, in the order the report suggests them.
    pub const ALL: [DemoPolicy; 3] = [DemoPolicy::Lww, DemoPolicy::SourcePriority, DemoPolicy::FieldLww];

    /// The name `[merge] policy` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            DemoPolicy::Lww => "lww",
            DemoPolicy::SourcePriority => "source-priority",
            DemoPolicy::FieldLww => "field-lww",
        }
    }
}

impl fmt::Display for DemoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The command line of `tributary demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Which demo to run.
    #[arg(long, value_enum, default_value_t = Scenario::Regions)]
    pub scenario: Scenario,
    /// How long the sources write: seconds, or a duration such as `1m`.
    #[arg(long, default_value = "20", value_parser = parse_duration)]
    pub duration: Duration,
    /// Change events per second, all sources together.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Merge policy of the regions scenario (default: TRIBUTARY_MERGE__POLICY, else lww).
    #[arg(long, value_enum)]
    pub policy: Option<DemoPolicy>,
    /// Directory for the SQLite file and the state store (default: a new one under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What `tributary demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Which demo.
    pub scenario: Scenario,
    /// How long the sources write.
    pub duration: Duration,
    /// Events per second, all sources together.
    pub rate: f64,
    /// Merge policy (`None`: TRIBUTARY_MERGE__POLICY, else the scenario's).
    pub policy: Option<DemoPolicy>,
    /// Where the SQLite file and the state store go (default: a new
    /// directory under the system temp dir).
    pub dir: Option<PathBuf>,
}

impl From<DemoArgs> for DemoOptions {
    fn from(a: DemoArgs) -> Self {
        DemoOptions { scenario: a.scenario, duration: a.duration, rate: a.rate, policy: a.policy, dir: a.dir }
    }
}

/// Why the demo could not run, or found its output wrong.
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn fail<E: fmt::Display>(what: impl fmt::Display) -> impl FnOnce(E) -> DemoError {
    move |e| DemoError(format!("{what}: {e}"))
}

/// Parses `--duration`: plain seconds (`20`, `2.5`) or a duration (`90s`, `1m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("\"{s}\" is not a duration")),
        Err(_) => humantime::parse_duration(s.trim()).map_err(|e| format!("\"{s}\" is not a duration ({e}); try 20 or 20s"))?,
    };
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(d)
}

const GROUP: &str = "tributary-demo";
const OUTPUT: &str = "customers.merged";
const TABLE: &str = "customers";
const PARTITIONS: i32 = 3;
/// Not the default 100 ms: an at-least-once cycle flushes the producer, and
/// rdkafka 0.39's `BaseProducer::flush` polls in fixed 100 ms slices, so a
/// cycle with a record in flight takes >= 100 ms; with a 100 ms interval
/// (measured from the start of the previous commit) the processor then
/// commits after every single record, about 10 records/s, until the backlog
/// happens to drain. 250 ms leaves each cycle time to process.
const COMMIT_INTERVAL: &str = "250ms";
/// How long the processor and the sink get at most to catch up after the
/// writes (the wait ends as soon as they have; a loaded machine needs more
/// than a quiet one).
const CATCH_UP: Duration = Duration::from_secs(60);

/// Runs the demo and prints its report on stdout (progress on stderr).
/// An aggregation run whose output differs from replay's is an error.
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(DemoError(format!("--rate must be a positive number of events per second, not {}", opts.rate)));
    }
    let scenario = opts.scenario;
    let policy = scenario.policy(policy_asked(opts.policy, std::env::var("TRIBUTARY_MERGE__POLICY").ok())?)?;
    let dir = prepare_dir(opts.dir.as_deref())?;
    let sqlite = dir.join("tributary-demo.sqlite");
    let state_dir = dir.join("state");
    let sources = scenario.sources();

    // Kafka, in process.
    let mock = MockCluster::new(1).map_err(fail("cannot start librdkafka's mock cluster"))?;
    let bootstrap = mock.bootstrap_servers();
    let mut topics: Vec<String> = sources.iter().map(|s| s.topic.to_string()).collect();
    topics.extend([
        OUTPUT.to_string(),
        crate::run::changelog_topic(GROUP),
        crate::run::dlq_topic(GROUP),
        crate::run::conflicts_topic(GROUP),
    ]);
    for t in &topics {
        mock.create_topic(t, PARTITIONS, 1).map_err(fail(format!("mock cluster: create topic {t}")))?;
    }

    let port = free_port()?;
    let config = scenario::demo_config(scenario, &bootstrap, policy, &state_dir, &sqlite, port)?;
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    eprintln!("tributary demo: Kafka = librdkafka's in-process mock cluster at {bootstrap}");
    for line in scenario.introduction(&config) {
        eprintln!("  {line}");
    }
    eprintln!("  metrics: {metrics_url}   state: {}   SQLite: {}", state_dir.display(), sqlite.display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("demo-runtime")
        .enable_all()
        .build()
        .map_err(fail("cannot start the async runtime"))?;
    let stop_processor = Arc::new(AtomicBool::new(false));
    let stop_sink = Arc::new(AtomicBool::new(false));
    let stop_sources = Arc::new(AtomicBool::new(false));

    // The processor counts into these; the demo reads them in process.
    let metrics = Arc::new(Metrics::new());
    let processor: JoinHandle<Result<crate::run::Counters, crate::run::RunError>> = {
        let (config, stop, handle) = (config.clone(), stop_processor.clone(), runtime.handle().clone());
        let options = RunOptions { manage_topics: false, metrics: Some(metrics.clone()), ..RunOptions::default() };
        std::thread::Builder::new()
            .name("demo-processor".into())
            .spawn(move || handle.block_on(crate::run::run_with(config, stop, options)))
            .map_err(fail("cannot start the processor thread"))?
    };
    let sink: JoinHandle<Result<crate::sink::SinkStats, crate::sink::SinkError>> = {
        let (config, stop) = (config.clone(), stop_sink.clone());
        std::thread::Builder::new()
            .name("demo-sink".into())
            .spawn(move || crate::sink::run(&config, &stop))
            .map_err(fail("cannot start the sink thread"))?
    };
    let live = Arc::new(LiveCounts::new(sources.len()));
    let writers: JoinHandle<Result<Produced, DemoError>> = {
        let (bootstrap, live, stop) = (bootstrap.clone(), live.clone(), stop_sources.clone());
        let (duration, rate) = (opts.duration, opts.rate);
        std::thread::Builder::new()
            .name("demo-sources".into())
            .spawn(move || simulate(scenario, &bootstrap, duration, rate, &live, &stop))
            .map_err(fail("cannot start the source simulator"))?
    };

    let mut progress = observe::Progress::new(&metrics, &sqlite, scenario);
    let started = Instant::now();
    // Writing phase: until the sources are done (or a part fails).
    let failure = loop {
        std::thread::sleep(Duration::from_millis(100));
        progress.tick(started, &live, "writing");
        if processor.is_finished() || sink.is_finished() {
            break Some(());
        }
        if writers.is_finished() {
            break None;
        }
    };
    if failure.is_some() {
        stop_sources.store(true, Ordering::Relaxed);
        stop_sink.store(true, Ordering::Relaxed);
        stop_processor.store(true, Ordering::Relaxed);
        progress.finish();
        let p = join(processor, "processor")?.map_err(fail("the processor stopped"));
        let s = join(sink, "sink")?.map_err(fail("the sink stopped"));
        let _ = join(writers, "source simulator");
        p?;
        s?;
        return Err(DemoError("the processor or the sink stopped early".into()));
    }
    let produced = match join(writers, "source simulator")? {
        Ok(p) => p,
        Err(e) => {
            stop_sink.store(true, Ordering::Relaxed);
            stop_processor.store(true, Ordering::Relaxed);
            progress.finish();
            let _ = join(processor, "processor");
            let _ = join(sink, "sink");
            return Err(e);
        }
    };
    let wrote_for = started.elapsed();

    // Catch-up phase: the processor consumed everything, every merged record
    // is on the output topic, and the sink stored the topic's end offsets.
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .map_err(fail("cannot create a client of the mock cluster"))?;
    let catch_up_deadline = Instant::now() + CATCH_UP;
    // Done when that holds twice in a row with nothing moving: a read can
    // land between a record's `consumed` and `emitted` counts.
    let mut settled: Option<(u64, Vec<i64>)> = None;
    let caught_up = loop {
        progress.tick(started, &live, "catching up");
        let counts = observe::MetricsView::read(&metrics);
        let ends: Option<Vec<i64>> = (0..PARTITIONS)
            .map(|p| watermarks.fetch_watermarks(OUTPUT, p, Duration::from_secs(2)).ok().map(|(_, h)| h))
            .collect();
        let sunk = observe::sink_offsets(&sqlite);
        let done = match (ends, &sunk) {
            (Some(ends), Some(sunk)) => {
                let consumed = counts.sum("tributary_records_consumed_total", &[]) as u64;
                let emitted = counts.sum("tributary_records_emitted_total", &[]) as u64;
                let on_topic: i64 = ends.iter().sum();
                let applied = (0..PARTITIONS).all(|p| sunk.get(&p).copied().unwrap_or(0) >= ends[p as usize]);
                if consumed >= produced.records() && on_topic as u64 == emitted && applied {
                    let now = (emitted, ends);
                    let stable = settled.as_ref() == Some(&now);
                    settled = Some(now);
                    stable
                } else {
                    settled = None;
                    false
                }
            }
            _ => false,
        };
        if done {
            break true;
        }
        if Instant::now() > catch_up_deadline || processor.is_finished() || sink.is_finished() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(150));
    };
    progress.finish();
    let counts = observe::MetricsView::read(&metrics);

    stop_sink.store(true, Ordering::Relaxed);
    stop_processor.store(true, Ordering::Relaxed);
    let sink_result = join(sink, "sink")?;
    let processor_result = join(processor, "processor")?;
    // The admin server's tasks hold the state store open until the runtime ends.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let counters = processor_result.map_err(fail("the processor failed"))?;
    let sink_stats = sink_result.map_err(fail("the sink failed"))?;

    // The sources and the output topic, while the mock cluster still runs.
    let check =
        if scenario.checks_replay() { Some(observe::replay_check(&config, &watermarks, sources, &sqlite)?) } else { None };
    drop(watermarks);
    drop(mock);

    let keys = observe::read_states(&state_dir, &produced.ids)?;
    let rows = observe::read_rows(&sqlite).map_err(fail(format!("cannot read {}", sqlite.display())))?;
    let known = observe::known_values(&produced.expected, &rows);
    let seen = report::Seen {
        config: &config,
        wrote_for,
        rate: opts.rate,
        produced: &produced,
        counts: &counts,
        keys: &keys,
        rows: &rows,
        sqlite: &sqlite,
        metrics_url: &metrics_url,
        caught_up,
        consumed: counters.consumed,
        sink_records: sink_stats.records,
        check: check.as_ref(),
        known: &known,
    };
    match scenario {
        Scenario::Regions => print!("{}", report::Regions(&seen)),
        Scenario::Aggregation => print!("{}", report::Aggregation(&seen)),
    }
    std::io::stdout().flush().ok();
    match check {
        Some(c) if !c.passed() => Err(DemoError(format!(
            "the output differs from replay's for {} keys (see the report); the state is in {}",
            c.mismatches.len(),
            dir.display()
        ))),
        _ if !known.mismatches.is_empty() => Err(DemoError(format!(
            "{} rows differ from what the source databases hold (see the report); the state is in {}",
            known.mismatches.len(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// `--policy`, else the policy TRIBUTARY_MERGE__POLICY names (`env`).
fn policy_asked(flag: Option<DemoPolicy>, env: Option<String>) -> Result<Option<DemoPolicy>, DemoError> {
    use clap::ValueEnum;
    match (flag, env) {
        (Some(p), _) => Ok(Some(p)),
        (None, None) => Ok(None),
        (None, Some(v)) => DemoPolicy::from_str(v.trim(), false).map(Some).map_err(|_| {
            let names: Vec<&str> = DemoPolicy::ALL.iter().map(|p| p.as_str()).collect();
            DemoError(format!("TRIBUTARY_MERGE__POLICY=\"{v}\" is not a policy: expected one of {}", names.join(", ")))
        }),
    }
}

fn join<T>(handle: JoinHandle<T>, what: &str) -> Result<T, DemoError> {
    handle.join().map_err(|_| DemoError(format!("the {what} thread panicked")))
}

/// The demo directory: the given one (previous demo files removed) or a new one.
fn prepare_dir(dir: Option<&Path>) -> Result<PathBuf, DemoError> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            std::env::temp_dir().join(format!("tributary-demo-{stamp}-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).map_err(fail(format!("cannot create {}", dir.display())))?;
    // A new mock cluster starts empty: a previous run's state and table would
    // point at offsets that no longer exist.
    let state = dir.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).map_err(fail(format!("cannot remove the previous demo's {}", state.display())))?;
    }
    for f in ["tributary-demo.sqlite", "tributary-demo.sqlite-wal", "tributary-demo.sqlite-shm"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(fail(format!("cannot remove the previous demo's {}", p.display())))?;
        }
    }
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail("cannot find a free port for the admin server"))?;
    l.local_addr().map(|a| a.port()).map_err(fail("cannot find a free port for the admin server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(parse_duration("6").unwrap(), Duration::from_secs(6));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn policies_take_the_names_of_the_configuration() {
        use clap::ValueEnum;
        for p in DemoPolicy::ALL {
            assert_eq!(DemoPolicy::from_str(p.as_str(), false).unwrap(), p);
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.as_str());
        }
        assert!(DemoPolicy::from_str("newest", false).is_err());
    }

    #[test]
    fn the_flag_comes_before_the_environment_which_must_name_a_policy() {
        let env = |v: &str| Some(v.to_string());
        assert_eq!(policy_asked(Some(DemoPolicy::Lww), env("field-lww")).unwrap(), Some(DemoPolicy::Lww));
        assert_eq!(policy_asked(None, env("source-priority")).unwrap(), Some(DemoPolicy::SourcePriority));
        assert_eq!(policy_asked(None, None).unwrap(), None);
        let e = policy_asked(None, env("newest")).unwrap_err().to_string();
        assert!(e.contains("TRIBUTARY_MERGE__POLICY=\"newest\"") && e.contains("field-lww"), "{e}");
    }
}
