//! The `tributary` command line. Parsing only: the work is in the library.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tributary::config::Config;

// The merge path allocates and frees many small strings per event; mimalloc
// handles that pattern far better than glibc (see doc/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks the kernel for transparent huge pages on its arenas
/// (`MADV_HUGEPAGE`), so the first touch of any part of 2 MiB makes all of
/// it resident: on a 50 000-key run that was 20-90 MB of huge pages
/// (`AnonHugePages` in `/proc/<pid>/smaps_rollup`) and about 35 MB of the
/// peak resident memory. The kernel checks this flag at each page fault, so
/// the arenas mimalloc reserved before `main` are covered too.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::{c_int, c_ulong};
        extern "C" {
            fn prctl(option: c_int, ...) -> c_int;
        }
        const PR_SET_THP_DISABLE: c_int = 41;
        // SAFETY: prctl with PR_SET_THP_DISABLE takes four unsigned long
        // arguments and only sets a flag of this process; a kernel without
        // it returns EINVAL, and the process then runs with huge pages.
        let (on, unused): (c_ulong, c_ulong) = (1, 0);
        unsafe {
            prctl(PR_SET_THP_DISABLE, on, unused, unused, unused);
        }
    }
}

/// librdkafka allocates with the C library's malloc, not mimalloc. glibc
/// gives each thread that meets a locked arena a new one, up to 8 per core,
/// and every arena keeps its freed pages: with the group consumer's,
/// producer's and restore consumer's broker threads that was about 20 MB of
/// a 50 000-key run's peak resident memory (`MALLOC_ARENA_MAX=2`: 177 → 157 MB,
/// events/s unchanged within the machine's noise; doc/benchmarks.md,
/// "Memory"). Set before any thread starts; a `MALLOC_ARENA_MAX` in the
/// environment is left to rule.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_ARENA_MAX: c_int = -8;
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets a tunable of the C allocator; no
            // thread has started yet.
            unsafe {
                mallopt(M_ARENA_MAX, 2);
            }
        }
    }
}

#[derive(Parser)]
#[command(name = "tributary", version, about = "Multi-source replication over Kafka: per-key version vectors, convergent merge")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `tributary=debug`.
    #[arg(long, global = true, env = "RUST_LOG")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the resolved configuration (secrets redacted), or every problem with it.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the processor: consume every source, merge, produce the compacted output.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Materialize the output topic into a table ([sink]: SQLite or PostgreSQL).
    Sink {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// First make the table equal to the topic: read it from the beginning and
        /// delete the rows whose keys it no longer holds; then go on as usual.
        #[arg(long)]
        resync: bool,
    },
    /// Run the merge offline over a kcat -J dump and write the output records.
    Replay {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The dump (JSON lines, kcat -J shape); `-` for stdin.
        #[arg(long, short)]
        input: PathBuf,
        /// Where to write the output records (same shape); `-` for stdout.
        #[arg(long, short)]
        output: PathBuf,
        /// Where to write records that fail (JSON lines: the record plus `error`, the message naming where and what, and `reason`, a short label such as `bad_value`, `truncate` or `malformed_line`).
        #[arg(long)]
        dead_letters: Option<PathBuf>,
    },
    /// Try one source's [sources.transform] and `where` on a kcat -J dump: prints each
    /// record's source and target columns side by side, or the dead-letter reason.
    /// Exit status 1 when some record would be a dead letter.
    TransformTest {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The source (its `name`) whose records to try; records of other topics are skipped.
        #[arg(long)]
        source: String,
        /// The dump (JSON lines, kcat -J shape); `-` for stdin.
        #[arg(long, short)]
        input: PathBuf,
    },
    /// Produce a kcat -J dump to its topics (the inverse of capturing with `kcat -J`).
    ///
    /// Every record goes to its topic with its key, headers and recorded partition
    /// (murmur2 of the key when the line has none, like the Java clients). The whole
    /// dump is checked first (each line a kcat record, each topic and partition
    /// present); if a line is bad, every problem is listed with its line number and
    /// nothing is produced. Exit status: 0 all delivered, 1 some records not delivered
    /// (each listed with its line), 2 bad lines, configuration or connection error,
    /// 130 interrupted (SIGINT/SIGTERM: what was sent is awaited and counted).
    Load {
        /// The TOML configuration file: its [kafka] section (bootstrap_servers, properties).
        #[arg(long, short)]
        config: PathBuf,
        /// The dump (JSON lines, kcat -J shape); `-` for stdin.
        #[arg(long, short)]
        input: PathBuf,
        /// Produce the records of topic FROM to topic TO instead (repeatable).
        #[arg(long, value_name = "FROM=TO", value_parser = tributary::load::parse_rename)]
        rename_topic: Vec<(String, String)>,
        /// Give each record its recorded `ts` as timestamp (default: the time of the load;
        /// old timestamps can fall outside the topic's retention.ms and be deleted at once).
        #[arg(long)]
        keep_timestamps: bool,
    },
    /// Try everything with nothing installed: in-process Kafka (librdkafka's mock
    /// cluster), simulated source databases, the processor and an SQLite sink, then a report.
    Demo(tributary::demo::DemoArgs),
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    few_malloc_arenas();
    let cli = Cli::parse();
    // The demo prints its own report; the processor's start-up lines would bury it.
    let default_level = if matches!(cli.command, Command::Demo { .. }) { "warn" } else { "info" };
    init_logging(cli.log_format, cli.log_level.as_deref().unwrap_or(default_level));
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    // The storage engine's INFO lines (one "Recovering LSM-tree" per
    // keyspace at every start) say nothing to an operator: WARN and up,
    // unless the filter names those crates itself.
    let mut filter = filter.to_string();
    for noisy in ["fjall", "lsm_tree"] {
        if !filter.contains(noisy) {
            filter.push_str(&format!(",{noisy}=warn"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.to_redacted_toml());
                Ok(ExitCode::SUCCESS)
            }
            // A file for `tributary sink` alone has no [[sources]]: check it as that.
            Err(e) => match Config::load_for_sink(&config) {
                Ok(c) if c.sources.is_empty() && c.sink.is_some() => {
                    eprintln!("a sink-only configuration: valid for `tributary sink` (`tributary run` needs [[sources]])");
                    print!("{}", c.to_redacted_toml());
                    Ok(ExitCode::SUCCESS)
                }
                _ => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(2))
                }
            },
        },
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(async move {
                let shutdown = Arc::new(AtomicBool::new(false));
                let started = Arc::new(AtomicBool::new(false));
                let (flag, processing) = (shutdown.clone(), started.clone());
                tokio::spawn(async move {
                    wait_for_signal().await;
                    if !processing.load(Ordering::Relaxed) {
                        // Start-up (waiting for a broker, a topic, the
                        // registry) holds nothing that needs finishing.
                        tracing::info!("signal received during start-up: stopping");
                        std::process::exit(130);
                    }
                    tracing::info!("signal received: finishing the open cycle and leaving the group");
                    flag.store(true, Ordering::Relaxed);
                    wait_for_signal().await;
                    tracing::warn!("second signal received: stopping at once");
                    std::process::exit(130);
                });
                let options = tributary::run::RunOptions { started: Some(started), ..Default::default() };
                match tributary::run::run_with(config, shutdown, options).await {
                    Ok(_) => Ok(ExitCode::SUCCESS),
                    Err(e) => {
                        tracing::error!("{e}");
                        eprintln!("error: {e}");
                        Ok(ExitCode::from(1))
                    }
                }
            })
        }
        Command::Sink { config, resync } => {
            let config = Config::load_for_sink(&config)?;
            let shutdown = Arc::new(AtomicBool::new(false));
            let flag = shutdown.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::spawn(move || {
                runtime.block_on(wait_for_signal());
                tracing::info!("signal received: finishing the open batch");
                flag.store(true, Ordering::Relaxed);
                runtime.block_on(wait_for_signal());
                tracing::warn!("second signal: stopping at once; the database keeps its last batch");
                std::process::exit(130);
            });
            match tributary::sink::run_with(&config, &shutdown, tributary::sink::SinkOptions { resync }) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    // Once, on stderr (where the log goes too): a fatal error logged and printed showed twice.
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Replay { config, input, output, dead_letters } => {
            let config = Config::load(&config)?;
            let reader: Box<dyn BufRead> = if is_std(&input) {
                Box::new(io::stdin().lock())
            } else {
                Box::new(BufReader::with_capacity(
                    1 << 20,
                    File::open(&input).with_context(|| format!("cannot open dump {}", input.display()))?,
                ))
            };
            let writer: Box<dyn Write> = if is_std(&output) {
                Box::new(BufWriter::new(io::stdout().lock()))
            } else {
                Box::new(BufWriter::with_capacity(
                    1 << 20,
                    File::create(&output).with_context(|| format!("cannot create {}", output.display()))?,
                ))
            };
            let mut dl_file = match &dead_letters {
                Some(p) => Some(BufWriter::new(
                    File::create(p).with_context(|| format!("cannot create dead-letter file {}", p.display()))?,
                )),
                None => None,
            };
            let name = if is_std(&input) { "<stdin>".to_string() } else { input.display().to_string() };
            let mut stderr = io::stderr().lock();
            let summary = tributary::replay::replay(
                &config,
                reader,
                &name,
                writer,
                dl_file.as_mut().map(|f| f as &mut dyn Write),
                &mut stderr,
            )
            .context("replay failed")?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::TransformTest { config, source, input } => {
            let config = Config::load(&config)?;
            let reader: Box<dyn BufRead> = if is_std(&input) {
                Box::new(io::stdin().lock())
            } else {
                Box::new(BufReader::new(File::open(&input).with_context(|| format!("cannot open dump {}", input.display()))?))
            };
            let name = if is_std(&input) { "<stdin>".to_string() } else { input.display().to_string() };
            let mut stdout = BufWriter::new(io::stdout().lock());
            let summary = tributary::replay::transform_test(&config, &source, reader, &name, &mut stdout)?;
            eprintln!("{summary}");
            Ok(if summary.dead_letters > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Load { config, input, rename_topic, keep_timestamps } => {
            let config = Config::load(&config)?;
            let dump = if is_std(&input) {
                let mut text = String::new();
                io::stdin().read_to_string(&mut text).context("cannot read the dump from stdin")?;
                tributary::load::Dump::Text { name: "<stdin>".into(), text }
            } else {
                tributary::load::Dump::File(input)
            };
            let options = tributary::load::LoadOptions { rename_topics: rename_topic.into_iter().collect(), keep_timestamps };
            // The first signal stops sending (what was sent is still awaited and
            // reported); a second one exits at once.
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::spawn(move || {
                runtime.block_on(wait_for_signal());
                flag.store(true, Ordering::Relaxed);
                runtime.block_on(wait_for_signal());
                std::process::exit(130);
            });
            let summary = tributary::load::load(&config, &dump, &options, &stop, &mut io::stderr().lock())?;
            eprintln!("{summary}");
            Ok(match summary {
                s if s.interrupted_after.is_some() => ExitCode::from(130),
                s if s.failed > 0 => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Demo(args) => {
            tributary::demo::run(&args.into())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_off_for_the_process() {
        super::no_transparent_huge_pages();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        // Kernels before 6.0 do not report the flag; there is nothing to check then.
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }
}
