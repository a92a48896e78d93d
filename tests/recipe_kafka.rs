//! The README's "A real broker in five commands", run as a user runs it
//! (the binary, `examples/two-regions/`, environment overrides), and
//! `tributary load` on the real broker.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::kafka::{self, Processor};
use common::setup::topic_exists;
use common::*;
use serde_json::Value;

fn example(file: &str) -> PathBuf {
    root().join("examples/two-regions").join(file)
}

/// A table row: column → value as text (NULL: None).
type Row = BTreeMap<String, Option<String>>;

/// The README and the reference under doc/, one after the other.
fn docs() -> String {
    let mut text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut pages: Vec<_> = std::fs::read_dir(root().join("doc")).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    for page in pages.iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        text.push('\n');
        text.push_str(&std::fs::read_to_string(page).unwrap());
    }
    text
}

/// The text between `## {title}` (in the README or a page under doc/) and
/// the next `## ` heading.
fn readme_section(title: &str) -> String {
    let readme = docs();
    let start = readme.find(&format!("\n{title}\n")).unwrap_or_else(|| panic!("the docs have no {title}"));
    let body = &readme[start + title.len() + 2..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].to_string()
}

/// The rows the five-command section shows after its `sqlite3 -header
/// -column` command: columns are cut where the dashes under the header say.
fn recipe_table() -> (Vec<String>, Vec<Row>) {
    let section = readme_section("## A real broker in five commands");
    let lines: Vec<&str> = section.lines().collect();
    let dashes = lines.iter().position(|l| l.trim_start().starts_with("--  ")).expect("a sqlite3 -column table");
    let (header, rule) = (lines[dashes - 1], lines[dashes]);
    // (start, end) of every column, from the runs of dashes.
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in rule.char_indices().chain([(rule.len(), ' ')]) {
        match (c == '-', start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    // The last column runs to the end of the line.
    let cell = |line: &str, (s, e): (usize, usize), last: bool| -> String {
        let end = if last { line.len() } else { e.min(line.len()) };
        line.get(s.min(line.len())..end).unwrap_or("").trim().to_string()
    };
    let n = spans.len();
    let columns: Vec<String> = spans.iter().enumerate().map(|(i, sp)| cell(header, *sp, i + 1 == n)).collect();
    let rows = lines[dashes + 1..]
        .iter()
        .take_while(|l| l.starts_with("    ") && !l.trim().is_empty())
        .map(|l| {
            columns
                .iter()
                .zip(&spans)
                .enumerate()
                .map(|(i, (c, sp))| {
                    let v = cell(l, *sp, i + 1 == n);
                    (c.clone(), (!v.is_empty()).then_some(v))
                })
                .collect()
        })
        .collect();
    (columns, rows)
}

/// The first `` `…` `` of a Markdown table cell.
fn code(cell: &str) -> &str {
    let s = cell.find('`').expect("a code span") + 1;
    let e = s + cell[s..].find('`').expect("a closed code span");
    &cell[s..e]
}

/// The worked example's `lww` rows (Ada from the policy table, Bob from the
/// deletes table) and the merged clocks its text gives, as table rows.
fn worked_example_rows(columns: &[String], vv_column: &str) -> Vec<Row> {
    let section = readme_section("### Worked example: two regions, one conflict");
    let row_of = |table_header: &str| -> Value {
        let at = section.find(table_header).unwrap_or_else(|| panic!("no table {table_header}"));
        let line = section[at..].lines().find(|l| l.starts_with("| `lww` |")).expect("an lww row");
        let cells: Vec<&str> = line.split(" | ").collect();
        serde_json::from_str(code(cells[1])).expect("a JSON row")
    };
    let clocks_at = section.find("Every final record carries").expect("the clocks sentence");
    let clocks: Vec<&str> = section[clocks_at..].split('`').skip(1).step_by(2).take(2).collect();
    let clock = |text: &str| text.trim_start_matches("tributary.vv = ").to_string();
    [(row_of("| policy | Ada |"), clock(clocks[0])), (row_of("| deletes | Bob |"), clock(clocks[1]))]
        .into_iter()
        .map(|(json, vv)| {
            columns
                .iter()
                .map(|c| {
                    let v = if c == vv_column {
                        Some(vv.clone())
                    } else {
                        match &json[c.as_str()] {
                            Value::Null => None,
                            Value::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        }
                    };
                    (c.clone(), v)
                })
                .collect()
        })
        .collect()
}

fn sqlite_rows(path: &Path, columns: &[String]) -> Option<Vec<Row>> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let sql = format!("SELECT {} FROM customers ORDER BY id", columns.join(", "));
    let mut stmt = conn.prepare(&sql).ok()?;
    let rows = stmt
        .query_map([], |r| {
            let mut row = Row::new();
            for (i, c) in columns.iter().enumerate() {
                let v = match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => None,
                    rusqlite::types::ValueRef::Integer(n) => Some(n.to_string()),
                    rusqlite::types::ValueRef::Real(x) => Some(x.to_string()),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        Some(String::from_utf8_lossy(t).to_string())
                    }
                };
                row.insert(c.clone(), v);
            }
            Ok(row)
        })
        .ok()?;
    rows.collect::<Result<Vec<_>, _>>().ok()
}

/// `tributary COMMAND -c examples/two-regions/tributary.toml` with `env`, in
/// the background, logging to `log`.
fn start(command: &str, env: &[(String, String)], log: &Path) -> Processor {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = tributary();
    cmd.args([command, "-c"]).arg(example("tributary.toml")).envs(env.iter().map(|(k, v)| (k, v)));
    cmd.env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn").stdout(Stdio::null()).stderr(file);
    Processor { child: cmd.spawn().expect("tributary starts"), log: log.to_path_buf() }
}

/// `tributary load ARGS` with `env` (and `stdin`); exit code and stderr.
fn load(args: &[&str], env: &[(String, String)], stdin: Option<&str>) -> (i32, String) {
    let mut cmd = tributary();
    cmd.arg("load").args(args).envs(env.iter().map(|(k, v)| (k, v)));
    let out = match stdin {
        None => cmd.output().unwrap(),
        Some(text) => {
            let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        }
    };
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn five_command_recipe_gives_the_readme_table() {
    let bootstrap = kafka::bootstrap();
    let dir = tempfile::tempdir().unwrap();
    // The example's topic names, made unique so that runs share the broker.
    let (eu, us, merged) =
        (kafka::unique("eu.public.customers"), kafka::unique("us.public.customers"), kafka::unique("customers.merged"));
    let db = dir.path().join("customers.sqlite");
    let env: Vec<(String, String)> = [
        ("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("TRIBUTARY_KAFKA__GROUP_ID", &kafka::unique("customers-merge")),
        ("TRIBUTARY_OUTPUT__TOPIC", &merged),
        ("TRIBUTARY_SOURCES__EU__TOPIC", &eu),
        ("TRIBUTARY_SOURCES__US__TOPIC", &us),
        ("TRIBUTARY_RUNTIME__STATE_DIR", &dir.path().join("state").display().to_string()),
        ("TRIBUTARY_ADMIN__LISTEN", "127.0.0.1:0"),
        ("TRIBUTARY_SINK__ADMIN_LISTEN", "127.0.0.1:0"),
        ("TRIBUTARY_SINK__URL", &db.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    // 2. the topics, 3 partitions each as in the README.
    kafka::create_topic(&eu, 3, &[]);
    kafka::create_topic(&us, 3, &[]);

    // 3. load the dump.
    let dump = example("dump.jsonl");
    let (code, stderr) = load(
        &[
            "-c",
            &example("tributary.toml").display().to_string(),
            "-i",
            &dump.display().to_string(),
            "--rename-topic",
            &format!("eu.public.customers={eu}"),
            "--rename-topic",
            &format!("us.public.customers={us}"),
        ],
        &env,
        None,
    );
    assert_eq!(code, 0, "load failed: {stderr}");
    assert!(stderr.contains(&format!("load: read=10 produced=10 failed=0 {eu}=5 {us}=5")), "{stderr}");
    assert!(!stderr.contains(" WARN ") && !stderr.contains(" ERROR "), "a clean load logs no warning: {stderr}");
    // Every record is where the dump says, as the dump says.
    let loaded: Vec<Value> = [kafka::read_topic(&eu, false), kafka::read_topic(&us, false)].concat();
    let expected = json_lines(&std::fs::read_to_string(&dump).unwrap());
    assert_eq!(loaded.len(), expected.len());
    for want in &expected {
        let topic = if want["topic"] == "eu.public.customers" { &eu } else { &us };
        let got = loaded
            .iter()
            .find(|r| r["topic"] == topic.as_str() && r["offset"] == want["offset"])
            .unwrap_or_else(|| panic!("{want} not loaded"));
        assert_eq!((&got["partition"], &got["key"], &got["payload"]), (&want["partition"], &want["key"], &want["payload"]));
        let headers = want.get("headers").cloned().unwrap_or(Value::Array(vec![]));
        assert_eq!(got["headers"], headers);
    }

    // 4. run, and the sink once run is ready.
    let run = start("run", &env, &dir.path().join("run.log"));
    let admin = kafka::admin_addr(&run);
    let deadline = Instant::now() + Duration::from_secs(60);
    while kafka::http_get(&admin, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "run not ready; log: {}", run.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let sink = start("sink", &env, &dir.path().join("sink.log"));

    // 5. the table equals the README's, and the worked example's lww rows.
    let (columns, readme_rows) = recipe_table();
    assert_eq!(columns, ["id", "name", "email", "city", "tier", "_tributary_vv"], "the README's table");
    assert_eq!(readme_rows.len(), 2, "Ada and Bob: {readme_rows:?}");
    assert_eq!(worked_example_rows(&columns, "_tributary_vv"), readme_rows, "the two README sections agree");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sqlite_rows(&db, &columns);
        if rows.as_ref() == Some(&readme_rows) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the table is {rows:?}, the README says {readme_rows:?}; sink log: {}",
            sink.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(sink.stop().code(), Some(0));
    assert_eq!(run.stop().code(), Some(0));
}

#[test]
fn a_bad_line_stops_the_load_before_anything_is_produced() {
    let topic = kafka::unique("load-bad");
    kafka::create_topic(&topic, 2, &[]);
    let missing = kafka::unique("load-missing");
    let good = |k: u32| format!(r#"{{"topic":"{topic}","partition":1,"key":"{k}","payload":"v{k}"}}"#);
    let dump = [
        good(1),
        "{\"topic\": oops".to_string(),
        format!(r#"{{"topic":"{topic}","partition":5,"key":"k","payload":"v"}}"#),
        String::new(),
        format!(r#"{{"topic":"{missing}","partition":0,"key":"k","payload":"v"}}"#),
        format!(r#"{{"topic":"{topic}","key":"k","payload":"v","headers":["a"]}}"#),
        good(2),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "dump.jsonl", &dump);
    let env = vec![("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS".to_string(), kafka::bootstrap())];
    let (code, stderr) =
        load(&["-c", &example("tributary.toml").display().to_string(), "-i", &path.display().to_string()], &env, None);
    assert_eq!(code, 2, "{stderr}");
    let name = path.display().to_string();
    for expected in [
        format!("{name}:2: not a kcat -J record"),
        format!("{name}:3: partition 5 does not exist: topic {topic} has 2 partitions"),
        format!("{name}:5: topic {missing} does not exist"),
        format!("{name}:6: `headers` must be a flat [name, value, …] list"),
        format!("{name}: 4 line(s) cannot be produced (listed above); nothing was produced"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(kafka::read_topic(&topic, false).is_empty(), "nothing was produced");
    assert!(!topic_exists(&missing), "load does not create topics");
}

#[test]
fn without_a_partition_the_key_goes_where_murmur2_puts_it_and_timestamps_can_be_kept() {
    let topic = kafka::unique("load-murmur2");
    kafka::create_topic(&topic, 4, &[]);
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 60_000;
    let keys: Vec<String> = (1..=12).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let dump: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let line = serde_json::json!({"topic": "renamed", "ts": ts + i as i64, "key": k, "payload": format!("v{i}"), "headers": ["h", null]});
            format!("{line}\n")
        })
        .collect();
    let env = vec![("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS".to_string(), kafka::bootstrap())];
    let args = [
        "-c",
        &example("tributary.toml").display().to_string(),
        "-i",
        "-",
        "--keep-timestamps",
        "--rename-topic",
        &format!("renamed={topic}"),
    ]
    .map(|s| s.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = load(&args, &env, Some(&dump));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("load: read=12 produced=12 failed=0 {topic}=12")), "{stderr}");
    let records = kafka::read_topic(&topic, false);
    assert_eq!(records.len(), 12);
    let mut used = std::collections::BTreeSet::new();
    for r in &records {
        let key = r["key"].as_str().unwrap();
        let i = keys.iter().position(|k| k == key).unwrap();
        assert_eq!(r["partition"], tributary::kafka::murmur2_partition(key.as_bytes(), 4), "{key}");
        assert_eq!(r["ts"], ts + i as i64, "--keep-timestamps");
        assert_eq!(r["headers"], serde_json::json!(["h", null]), "a header with a null value");
        used.insert(r["partition"].as_i64().unwrap());
    }
    assert!(used.len() > 1, "the keys spread over partitions: {used:?}");
}

#[test]
fn a_record_the_broker_refuses_is_reported_with_its_line() {
    let topic = kafka::unique("load-refused");
    kafka::create_topic(&topic, 1, &[("max.message.bytes", "2000")]);
    let big = "x".repeat(10_000);
    let dump = [("1", "small"), ("2", big.as_str()), ("3", "small too")]
        .iter()
        .map(|(k, v)| format!("{}\n", serde_json::json!({"topic": topic, "partition": 0, "key": k, "payload": v})))
        .collect::<String>();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "dump.jsonl", &dump);
    let env = vec![("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS".to_string(), kafka::bootstrap())];
    let (code, stderr) =
        load(&["-c", &example("tributary.toml").display().to_string(), "-i", &path.display().to_string()], &env, None);
    assert_eq!(code, 1, "{stderr}");
    // The broker refuses whole batches: the small records may share the big
    // one's fate. Whatever it refused is listed by line; the rest is there.
    let in_topic: Vec<String> = kafka::read_topic(&topic, false).iter().map(|r| r["key"].as_str().unwrap().to_string()).collect();
    let refused: Vec<&str> = ["1", "2", "3"].into_iter().filter(|k| !in_topic.iter().any(|t| t == k)).collect();
    assert!(refused.contains(&"2"), "the big record was refused: {in_topic:?}");
    for line in &refused {
        assert!(stderr.contains(&format!("{}:{line}: not delivered to {topic} [0]: ", path.display())), "{stderr}");
    }
    let summary = format!("load: read=3 produced={} failed={}", in_topic.len(), refused.len());
    assert!(stderr.contains(&summary), "{summary} in {stderr}");
}

#[test]
fn the_readme_gives_the_example_tables_sink_columns() {
    let text = std::fs::read_to_string(example("tributary.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let columns = config["sink"]["columns"].as_array().expect("[sink] columns");
    let listed: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.as_str().unwrap())).collect();
    let readme = docs().split_whitespace().collect::<Vec<_>>().join(" ");
    let wanted = format!("`columns = [{}]`", listed.join(", "));
    assert!(readme.contains(&wanted), "the docs should name the example's columns: {wanted}");
}

/// Ctrl-C in the middle of a load: what was sent is awaited and counted, and
/// it is exactly the dump's first lines, so the user knows where to resume.
#[test]
fn an_interrupted_load_reports_the_last_line_sent() {
    let topic = kafka::unique("load-interrupted");
    kafka::create_topic(&topic, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let lines = 300_000;
    for i in 0..lines {
        writeln!(file, r#"{{"topic":"{topic}","partition":0,"key":"{i}","payload":"v"}}"#).unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let child = tributary()
        .args(["load", "-c"])
        .arg(example("tributary.toml"))
        .arg("-i")
        .arg(&path)
        .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", kafka::bootstrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once records arrive.
    let watcher: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rdkafka::consumer::Consumer::fetch_watermarks(&watcher, &topic, 0, Duration::from_secs(5)).unwrap().1 == 0 {
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("{stderr}");
    let records = kafka::read_topic(&topic, false);
    match out.status.code() {
        Some(130) => {
            let at = stderr.find("load: interrupted after line ").expect("the summary") + "load: interrupted after line ".len();
            let sent: usize = stderr[at..].split(':').next().unwrap().parse().unwrap();
            assert!(sent < lines, "{stderr}");
            assert!(stderr.contains(&format!("read={lines} produced={sent} failed=0")), "{stderr}");
            assert_eq!(records.len(), sent, "every record sent was delivered and counted");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r["key"], i.to_string(), "the dump's first lines, in order");
            }
        }
        // A machine fast enough to finish first: then everything is there.
        Some(0) => assert_eq!(records.len(), lines, "{stderr}"),
        other => panic!("exit {other:?}: {stderr}"),
    }
}
