//! Static checks of the deployment kit under `deploy/`: every YAML file
//! parses, the Prometheus config and alerts pass `promtool` (including the
//! alert unit tests), the dashboard and the alerts use only the metric names
//! Tributary exports, the example configurations parse with
//! `tributary::config::Config::parse`, and the Kubernetes and Compose files
//! render where `kubectl` / `docker compose` exist.
//!
//! Needs `python3` with PyYAML and `promtool` (Debian package `prometheus`).
//! A missing tool fails the test with what to install; only `kubectl` and
//! `docker compose` are optional (Docker is not on the development machines).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tributary::config::Config;

/// Counters and gauges, exactly as exported.
const SCALARS: &[&str] = &[
    "tributary_records_consumed_total",
    "tributary_records_emitted_total",
    "tributary_events_dropped_total",
    "tributary_conflicts_total",
    "tributary_dead_letters_total",
    "tributary_consumer_lag_records",
    "tributary_clock_skew_seconds",
    "tributary_state_keys",
    "tributary_restore_remaining_records",
    "tributary_restore_rate_records_per_second",
    "tributary_standby_lag_records",
    "tributary_transactions_total",
    "tributary_rebalances_total",
    "tributary_schema_registry_errors_total",
    "tributary_ready",
];

/// Histograms: used as `<name>_bucket`, `<name>_sum`, `<name>_count`.
const HISTOGRAMS: &[&str] = &["tributary_siblings", "tributary_cycle_duration_seconds", "tributary_event_age_seconds"];

/// The standard process collector's metrics.
const PROCESS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, exts, out);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)) {
            out.push(path);
        }
    }
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs a required tool; a missing one fails with how to install it.
fn run_required(program: &str, args: &[&str], install: &str) -> Output {
    match Command::new(program).args(args).current_dir(root()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed; it is required by tests/deploy.rs: {install}")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

const PYYAML_INSTALL: &str = "install python3 with PyYAML (`pip install pyyaml` or `apt-get install -y python3-yaml`)";

/// Every document of a YAML file, as JSON values (PyYAML `safe_load_all`).
fn yaml_docs(path: &Path) -> Result<Vec<Value>, String> {
    const SCRIPT: &str = "import json, sys, yaml\n\
                          with open(sys.argv[1]) as f:\n    docs = list(yaml.safe_load_all(f))\n\
                          json.dump(docs, sys.stdout, default=str)\n";
    let probe = run_required("python3", &["-c", "import yaml"], PYYAML_INSTALL);
    assert!(probe.status.success(), "python3 cannot import yaml: {PYYAML_INSTALL}\n{}", output_text(&probe));
    let out = run_required("python3", &["-c", SCRIPT, path.to_str().expect("UTF-8 path")], PYYAML_INSTALL);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("PyYAML output is not JSON: {e}"))
}

fn yaml_doc(path: &Path) -> Value {
    let docs = yaml_docs(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)));
    assert_eq!(docs.len(), 1, "{}: expected one YAML document", rel(path));
    docs.into_iter().next().unwrap()
}

const PROMTOOL_INSTALL: &str =
    "install it with `apt-get update && apt-get install -y prometheus` (Debian/Ubuntu package `prometheus` ships promtool)";

fn promtool(args: &[&str]) {
    let out = run_required("promtool", args, PROMTOOL_INSTALL);
    assert!(out.status.success(), "promtool {} failed:\n{}", args.join(" "), output_text(&out));
}

// (a) ----------------------------------------------------------------------

#[test]
fn every_yaml_file_parses() {
    let mut yaml = Vec::new();
    files(&root().join("deploy"), &["yml", "yaml"], &mut yaml);
    assert!(yaml.len() >= 12, "expected the deploy/ YAML files, found {yaml:?}");
    let mut problems = Vec::new();
    for path in &yaml {
        match yaml_docs(path) {
            Ok(docs) if docs.iter().any(|d| !d.is_null()) => {}
            Ok(_) => problems.push(format!("{}: no YAML document", rel(path))),
            Err(e) => problems.push(format!("{}: {e}", rel(path))),
        }
    }
    assert!(problems.is_empty(), "YAML files that do not parse:\n{}", problems.join("\n"));
}

// (b) ----------------------------------------------------------------------

#[test]
fn promtool_accepts_config_and_rules() {
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(&["test", "rules", "deploy/prometheus/alerts.test.yml"]);
}

#[test]
fn alerts_are_the_documented_ones() {
    let doc = yaml_doc(&deploy("prometheus/alerts.yml"));
    let mut names = BTreeSet::new();
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key].as_str().is_some_and(|s| !s.trim().is_empty()),
                    "alert {name}: annotation {key} missing"
                );
            }
            assert!(rule["labels"]["severity"].is_string(), "alert {name}: no severity label");
            check_metric_names(&format!("alert {name}"), rule["expr"].as_str().expect("expr"));
            names.insert(name.to_string());
        }
    }
    for wanted in [
        "TributaryLagGrowing",
        "TributaryDeadLetters",
        "TributaryConflictSpike",
        "TributaryNotReady",
        "TributaryRestoreStuck",
        "TributaryTransactionsAborting",
    ] {
        assert!(names.contains(wanted), "alerts.yml has no {wanted}");
    }
    // Every alert has a unit test.
    let tests = read(&deploy("prometheus/alerts.test.yml"));
    for name in &names {
        assert!(tests.contains(&format!("alertname: {name}\n")), "alerts.test.yml does not test {name}");
    }
}

// (c) ----------------------------------------------------------------------

/// Metric names in a PromQL expression that look like Tributary's or the
/// process collector's (`tributary_[a-z_]+`, `process_[a-z_]+`).
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    for prefix in ["tributary_", "process_"] {
        let mut from = 0;
        while let Some(found) = expr[from..].find(prefix) {
            let start = from + found;
            let preceded = start > 0 && {
                let c = bytes[start - 1];
                c.is_ascii_alphanumeric() || c == b'_' || c == b':'
            };
            let mut end = start + prefix.len();
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            if !preceded {
                names.push(expr[start..end].to_string());
            }
            from = end;
        }
    }
    names
}

fn known_metric(name: &str) -> bool {
    SCALARS.contains(&name)
        || PROCESS.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|base| HISTOGRAMS.contains(&base)))
}

fn check_metric_names(what: &str, expr: &str) {
    for name in metric_names(expr) {
        assert!(known_metric(&name), "{what}: unknown metric `{name}` in `{expr}`");
    }
}

fn all_panels(panels: &[Value], out: &mut Vec<Value>) {
    for p in panels {
        out.push(p.clone());
        if let Some(nested) = p["panels"].as_array() {
            all_panels(nested, out);
        }
    }
}

#[test]
fn dashboard_queries_use_exported_metrics_and_are_valid_promql() {
    let path = deploy("grafana/dashboards/tributary.json");
    let dash: Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", rel(&path)));
    assert_eq!(dash["schemaVersion"], 39, "schemaVersion");
    assert_eq!(dash["uid"], "tributary");

    let mut panels = Vec::new();
    all_panels(dash["panels"].as_array().expect("panels"), &mut panels);
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id in {title}");
        assert!(p["gridPos"]["w"].is_number() && p["gridPos"]["h"].is_number(), "panel {title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "prometheus", "panel {title}: datasource");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {title}: no targets"));
        assert!(!targets.is_empty(), "panel {title}: no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "prometheus", "panel {title}: target datasource");
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: target without expr"));
            check_metric_names(&format!("panel {title:?}"), expr);
            exprs.push(expr.to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        assert_eq!(var["datasource"]["uid"], "prometheus", "variable {}", var["name"]);
        let query = var["query"]["query"].as_str().or(var["query"].as_str()).expect("variable query");
        check_metric_names(&format!("variable {}", var["name"]), query);
    }

    // Every exported Tributary metric is on the dashboard.
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for m in SCALARS.iter().chain(HISTOGRAMS) {
        assert!(
            used.iter().any(|u| u == m || u.strip_prefix(m).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "no dashboard panel shows {m}"
        );
    }

    // Valid PromQL: promtool parses each query as a recording rule, with
    // Grafana's variables replaced by values.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$source", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": e })
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard-queries.yml");
    let doc = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).expect("write rules");
    promtool(&["check", "rules", file.to_str().unwrap()]);
}

#[test]
fn metric_name_scanner() {
    assert_eq!(
        metric_names(r#"sum(rate(tributary_siblings_bucket{job="tributary"}[5m])) / process_open_fds"#),
        ["tributary_siblings_bucket", "process_open_fds"]
    );
    assert!(known_metric("tributary_event_age_seconds_count"));
    assert!(!known_metric("tributary_event_age_seconds"));
    assert!(!known_metric("tributary_records_total"));
    assert!(!known_metric("tributary_ready_bucket"));
}

// (d) ----------------------------------------------------------------------

fn parse_config(text: &str, origin: &str, env: Vec<(&str, &str)>) -> Config {
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::parse(text, origin, env).unwrap_or_else(|e| panic!("{e}"))
}

fn check_example_config(text: &str, origin: &str) {
    let config = parse_config(text, origin, vec![]);
    assert_eq!(config.kafka.group_id, "customers-merge", "{origin}");
    assert_eq!(config.output.topic, "customers.merged", "{origin}");
    let sources: Vec<_> = config.sources.iter().map(|s| (s.name.as_str(), s.topic.as_str())).collect();
    assert_eq!(sources, [("eu", "eu.public.customers"), ("us", "us.public.customers")], "{origin}");
    assert_eq!(config.runtime.state_dir, Path::new("/var/lib/tributary"), "{origin}: state_dir is the image's volume");
    // The admin port the probes, the Service and Prometheus use.
    let table: toml::Table = toml::from_str(text).unwrap();
    assert_eq!(table["admin"]["listen"].as_str(), Some("0.0.0.0:9464"), "{origin}: [admin] listen");
}

#[test]
fn pipeline_example_config_parses_with_its_sink() {
    let path = deploy("examples/pipeline/tributary.toml");
    let text = read(&path);
    let config = parse_config(&text, &rel(&path), vec![]);
    let sink = config.sink.as_ref().expect("[sink]");
    sink.table_spec().expect("a valid table layout");
    assert_eq!(config.sources.len(), 2);
    for region in ["eu", "us"] {
        let props = read(&deploy(&format!("examples/pipeline/debezium-{region}.properties")));
        assert!(props.contains("plugin.name=pgoutput") && props.contains(&format!("topic.prefix={region}")), "{region}");
        let topic = format!("{region}.public.customers");
        assert!(config.sources.iter().any(|s| s.topic == topic), "{topic} is a source");
    }
}

#[test]
fn example_config_parses() {
    let path = deploy("examples/tributary.toml");
    let text = read(&path);
    check_example_config(&text, &rel(&path));

    // The overrides docker-compose.yml and the README use.
    let config = parse_config(
        &text,
        &rel(&path),
        vec![
            ("TRIBUTARY_KAFKA__INSTANCE_ID", "tributary-1"),
            ("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092"),
            ("TRIBUTARY_KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret"),
        ],
    );
    assert_eq!(config.kafka.instance_id.as_deref(), Some("tributary-1"));
    assert_eq!(config.kafka.bootstrap_servers, "kafka:9092");
    assert_eq!(config.kafka.properties.get("sasl.password").map(String::as_str), Some("s3cret"));
}

#[test]
fn kubernetes_configmap_config_parses() {
    let path = deploy("kubernetes/configmap.yaml");
    let doc = yaml_doc(&path);
    let text = doc["data"]["tributary.toml"].as_str().expect("configmap data tributary.toml");
    check_example_config(text, &format!("{} data.tributary.toml", rel(&path)));
}

// Consistency between the files --------------------------------------------

#[test]
fn kubernetes_manifests_fit_together() {
    let k = |f: &str| yaml_doc(&deploy(&format!("kubernetes/{f}")));
    let kustomization = k("kustomization.yaml");
    let listed: BTreeSet<&str> =
        kustomization["resources"].as_array().expect("resources").iter().map(|r| r.as_str().unwrap()).collect();
    let mut present = Vec::new();
    files(&deploy("kubernetes"), &["yaml", "yml"], &mut present);
    for f in &present {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name != "kustomization.yaml" {
            assert!(listed.contains(name), "kustomization.yaml does not list {name}");
        }
    }
    assert_eq!(listed.len(), present.len() - 1, "kustomization.yaml lists files that do not exist: {listed:?}");

    let sts = k("statefulset.yaml");
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 2);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    assert_eq!(c["ports"][0]["name"], "metrics");
    let env = c["env"].as_array().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "TRIBUTARY_KAFKA__INSTANCE_ID" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
        "instance id from the pod name"
    );
    assert!(c["volumeMounts"].as_array().unwrap().iter().any(
        |m| m["mountPath"] == "/var/lib/tributary" && m["name"] == sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    ));
    // The admin token: a Secret mounted where the configuration's token_file points.
    let text = k("configmap.yaml")["data"]["tributary.toml"].as_str().expect("configmap data").to_string();
    let token_file = parse_config(&text, "configmap.yaml", vec![]).admin.token_file.expect("[admin] token_file");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| token_file.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("no volume mounted at the directory of {}", token_file.display()));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).expect("the mounted volume");
    assert_eq!(volume["secret"]["secretName"], "tributary-admin", "the token comes from a Secret");
    assert_eq!(token_file.file_name().unwrap(), "admin-token", "the Secret's key is the file name");

    let svc = k("service.yaml");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9464);
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"]);

    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (file, selector) in [
        ("statefulset.yaml", sts["spec"]["selector"]["matchLabels"].clone()),
        ("service.yaml", svc["spec"]["selector"].clone()),
        ("pdb.yaml", k("pdb.yaml")["spec"]["selector"]["matchLabels"].clone()),
        ("podmonitor.yaml", k("podmonitor.yaml")["spec"]["selector"]["matchLabels"].clone()),
    ] {
        for (key, value) in selector.as_object().expect("selector") {
            assert_eq!(&labels[key], value, "{file}: selector {key} does not match the pod labels");
        }
    }
    let pm = k("podmonitor.yaml");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    assert_eq!(k("pdb.yaml")["spec"]["maxUnavailable"], 1);

    // Renders, where kubectl is installed (optional).
    match Command::new("kubectl").args(["kustomize", "deploy/kubernetes"]).current_dir(root()).output() {
        Ok(out) => assert!(out.status.success(), "kubectl kustomize deploy/kubernetes:\n{}", output_text(&out)),
        Err(_) => eprintln!("note: kubectl not found; `kubectl kustomize deploy/kubernetes` not run"),
    }
}

#[test]
fn compose_stack_fits_together() {
    let compose = yaml_doc(&deploy("docker-compose.yml"));
    let services = compose["services"].as_object().expect("services");
    let mut ids = BTreeSet::new();
    let mut state_volumes = BTreeSet::new();
    for name in ["tributary-1", "tributary-2"] {
        let s = &services[name];
        assert_eq!(s["build"]["dockerfile"], "deploy/Dockerfile", "{name}");
        assert_eq!(s["environment"]["TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS"], "kafka:9092", "{name}");
        ids.insert(s["environment"]["TRIBUTARY_KAFKA__INSTANCE_ID"].as_str().expect("instance id").to_string());
        let volumes: Vec<&str> = s["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(volumes.contains(&"./examples/tributary.toml:/etc/tributary/tributary.toml:ro"), "{name}: config");
        let state = volumes.iter().find(|v| v.ends_with(":/var/lib/tributary")).expect("state volume");
        state_volumes.insert(state.to_string());
    }
    assert_eq!(ids.len(), 2, "each instance needs its own instance_id");
    assert_eq!(state_volumes.len(), 2, "each instance needs its own state volume");
    assert_eq!(services["kafka"]["image"], "apache/kafka:4.1.0");

    // Prometheus scrapes both instances on the admin port.
    let prom = yaml_doc(&deploy("prometheus/prometheus.yml"));
    let job = prom["scrape_configs"].as_array().unwrap().iter().find(|j| j["job_name"] == "tributary").expect("job tributary");
    let targets: BTreeSet<&str> =
        job["static_configs"][0]["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(targets, BTreeSet::from(["tributary-1:9464", "tributary-2:9464"]));

    // Grafana's datasource uid is the one the dashboard names.
    let ds = yaml_doc(&deploy("grafana/provisioning/datasources/prometheus.yml"));
    assert_eq!(ds["datasources"][0]["uid"], "prometheus");

    // (e) `docker compose config`, only where Compose exists.
    let available = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("note: `docker compose` not available; `docker compose -f deploy/docker-compose.yml config -q` skipped");
        return;
    }
    let out = Command::new("docker")
        .args(["compose", "-f", "deploy/docker-compose.yml", "config", "-q"])
        .current_dir(root())
        .output()
        .expect("docker compose");
    assert!(out.status.success(), "docker compose config:\n{}", output_text(&out));
}

#[test]
fn avro_pipeline_example_parses_and_redacts_the_registry_password() {
    let path = deploy("examples/pipeline/tributary-avro.toml");
    let text = read(&path);
    check_example_config(&text, &rel(&path));
    let config = parse_config(&text, &rel(&path), vec![("TRIBUTARY_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD", "s3cret")]);
    assert_eq!(config.output.format, tributary::config::OutputFormat::Avro);
    assert!(config.sources.iter().all(|s| s.format == tributary::config::SourceFormat::DebeziumAvro));
    let registry = config.schema_registry.as_ref().expect("[schema_registry]");
    assert_eq!(registry.basic_auth_password.as_deref(), Some("s3cret"));
    let printed = config.to_redacted_toml();
    assert!(!printed.contains("s3cret") && printed.contains("<redacted>"), "{printed}");
    // Without the registry, Avro is refused naming the keys that need it.
    let (head, rest) = text.split_once("[schema_registry]").unwrap();
    let without = format!("{head}[output]{}", rest.split_once("[output]").unwrap().1);
    let err = Config::parse(&without, "x.toml", Vec::new()).unwrap_err().to_string();
    assert!(err.contains("schema_registry: required by sources.eu.format, sources.us.format, output.format"), "{err}");
}
