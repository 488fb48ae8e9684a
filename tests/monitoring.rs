//! The Prometheus files in `deploy/prometheus/` stay right: promtool accepts the alert rules,
//! their unit tests pass (each alert has a case that fires and one that does not), promtool
//! accepts a configuration made of the scrape example, every metric name and label the rules
//! use is in a real daemon's /metrics, and a real Prometheus server scrapes a daemon with the
//! scrape example and evaluates the rules. Debian's `prometheus` package ships promtool and
//! the server; a machine without them fails these tests, naming the package.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use serde::Deserialize;
use serde_json::Value;
use support::daemon::Daemon;
use support::{Cluster, HTTP_PORT};

fn dir() -> PathBuf {
    support::repo().join("deploy/prometheus")
}

/// The YAML file `rel` (under `deploy/`) as a JSON value.
fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v = serde_yaml_ng::Value::deserialize(serde_yaml_ng::Deserializer::from_str(&text))
        .unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::to_value(v).unwrap()
}

/// promtool on this machine's PATH; the test fails naming the package when it is missing.
fn promtool_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed: it comes with Debian's prometheus package \
                 (apt-get install -y --no-install-recommends prometheus; scripts/test installs it)"
            )
        })
}

/// Runs `promtool ARGS` (killed after `support::TOOL_LIMIT`); its exit code and output.
fn promtool(args: &[&str]) -> (i32, String) {
    let o = support::run_bounded(
        Command::new(promtool_path()).args(args),
        b"",
        support::TOOL_LIMIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (o.code(), format!("{}{}", o.stdout_text(), o.stderr_text()))
}

/// The alert rules of alerts.yaml, in order.
fn rules() -> Vec<Value> {
    let doc = yaml(&dir().join("alerts.yaml"));
    let rules: Vec<Value> = doc["groups"]
        .as_array()
        .expect("alerts.yaml has groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("each group has rules").clone())
        .collect();
    assert!(!rules.is_empty());
    rules
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = rules();
    let alerts = dir().join("alerts.yaml");
    let (code, out) = promtool(&["check", "rules", alerts.to_str().unwrap()]);
    assert_eq!(code, 0, "promtool check rules:\n{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );

    let tests = dir().join("alerts_test.yaml");
    let (code, out) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert_eq!(code, 0, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert: a severity, a summary and a description, and in the unit tests a case where
    // it fires and one where it does not.
    let cases: Vec<(String, bool)> = yaml(&tests)["tests"]
        .as_array()
        .expect("alerts_test.yaml has tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let fires = c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            (c["alertname"].as_str().unwrap().to_string(), fires)
        })
        .collect();
    let mut problems = Vec::new();
    for r in &rules {
        let name = r["alert"].as_str().expect("every rule is an alert");
        for (key, field) in [
            ("labels", "severity"),
            ("annotations", "summary"),
            ("annotations", "description"),
        ] {
            if r[key][field].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: no {key}.{field}"));
            }
        }
        for (fires, what) in [(true, "fires"), (false, "does not fire")] {
            if !cases.iter().any(|(n, f)| n == name && *f == fires) {
                problems.push(format!("{name}: no unit test where it {what}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_configuration_made_of_the_scrape_example_passes_promtool_check_config() {
    let scrape_path = dir().join("scrape.yaml");
    let scrape = std::fs::read_to_string(&scrape_path).unwrap();
    let jobs = yaml(&scrape_path)["scrape_configs"].clone();
    let job = &jobs[0];
    assert_eq!(
        job["job_name"], "kube-ssh-tunnel",
        "alerts.yaml's `up` rule names this job"
    );
    assert_eq!(job["metrics_path"], "/metrics");
    let target = job["static_configs"][0]["targets"][0].as_str().unwrap();

    // The target is where the shipped Pod serves its admin API.
    let pod = yaml(&support::repo().join("deploy/kubeadm/kube-ssh-tunnel.yaml"));
    let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let listen = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--admin-listen") {
            Some(v) if v.starts_with('=') => Some(v[1..].to_string()),
            Some("") => args.get(i + 1).map(|v| v.to_string()),
            _ => None,
        })
        .expect("the Pod has --admin-listen");
    assert_eq!(
        target, listen,
        "the scrape target is the Pod's --admin-listen"
    );

    let tmp = tempfile::tempdir().unwrap();
    // A Prometheus server on the control-plane host: the scrape job and the alert rules.
    let server = tmp.path().join("prometheus.yml");
    let alerts = dir().join("alerts.yaml");
    std::fs::write(
        &server,
        format!(
            "global:\n  scrape_interval: 30s\n  external_labels:\n    host: cp-1\n\
             rule_files:\n  - {}\n{scrape}",
            alerts.display()
        ),
    )
    .unwrap();
    let (code, out) = promtool(&["check", "config", server.to_str().unwrap()]);
    assert_eq!(code, 0, "promtool check config:\n{out}");
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");

    // A Prometheus agent on the host that sends the samples to a central Prometheus.
    let agent = tmp.path().join("agent.yml");
    std::fs::write(
        &agent,
        format!(
            "global:\n  scrape_interval: 30s\n  external_labels:\n    host: cp-1\n\
             remote_write:\n  - url: https://prometheus.example.com/api/v1/write\n{scrape}"
        ),
    )
    .unwrap();
    let (code, out) = promtool(&["check", "config", "--agent", agent.to_str().unwrap()]);
    assert_eq!(code, 0, "promtool check config --agent:\n{out}");
}

/// What a PromQL expression uses.
#[derive(Debug, Default)]
struct Uses {
    /// Metric names of the selectors.
    metrics: BTreeSet<String>,
    /// Label matchers: (metric, label, operator, value).
    matchers: Vec<(String, String, String, String)>,
    /// Labels named in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: BTreeSet<String>,
}

const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Reads a PromQL expression: its selectors' metric names and label matchers, and the labels
/// of its grouping clauses. Functions are the names followed by `(`; numbers, durations and
/// strings are skipped. Enough for rule files, not a full parser (promtool checks the syntax).
fn read_promql(expr: &str) -> Uses {
    let c: Vec<char> = expr.chars().collect();
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '_' || c[j] == ':') {
            j += 1;
        }
        (c[i..j].iter().collect(), j)
    };
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // A quoted string starting at i: its value and the index after it.
    let string = |i: usize| -> (String, usize) {
        let q = c[i];
        let mut v = String::new();
        let mut j = i + 1;
        while j < c.len() && c[j] != q {
            if c[j] == '\\' && q != '`' {
                j += 1;
            }
            if j < c.len() {
                v.push(c[j]);
            }
            j += 1;
        }
        (v, j + 1)
    };
    let mut uses = Uses::default();
    // The metric just read, for a `{` right after it.
    let mut selector: Option<String> = None;
    let mut group_next = false;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        let metric = selector.take();
        if ch == '"' || ch == '\'' || ch == '`' {
            i = string(i).1;
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '{' {
            let metric = metric.expect("a selector without a metric name");
            i = skip_ws(i + 1);
            while i < c.len() && c[i] != '}' {
                let (label, j) = ident(i);
                let j = skip_ws(j);
                let op_len = if c[j] == '=' && c.get(j + 1) != Some(&'~') {
                    1
                } else {
                    2
                };
                let op: String = c[j..j + op_len].iter().collect();
                let (value, j) = string(skip_ws(j + op_len));
                uses.matchers.push((metric.clone(), label, op, value));
                i = skip_ws(j);
                if c.get(i) == Some(&',') {
                    i = skip_ws(i + 1);
                }
            }
            i += 1;
        } else if ch == '(' && group_next {
            group_next = false;
            i += 1;
            while i < c.len() && c[i] != ')' {
                if c[i].is_ascii_alphabetic() || c[i] == '_' {
                    let (label, j) = ident(i);
                    uses.grouping.insert(label);
                    i = j;
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`0.8`, `1e3`, `5m`).
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let (name, j) = ident(i);
            i = j;
            let lower = name.to_ascii_lowercase();
            if GROUPING.contains(&name.as_str()) {
                group_next = true;
            } else if AGGREGATIONS.contains(&name.as_str())
                || KEYWORDS.contains(&lower.as_str())
                || c.get(skip_ws(i)) == Some(&'(')
            {
                // An operator or a function.
            } else {
                uses.metrics.insert(name.clone());
                selector = Some(name);
            }
        } else {
            i += 1;
        }
    }
    uses
}

#[test]
fn the_promql_reader_finds_metrics_matchers_and_grouping_labels() {
    let u = read_promql(
        "(\n  sum without (result) (rate(a_total{result!=\"ok\", node=~'n.*'}[10m] offset 5m))\n\
         / on(node) group_left(kind) b\n) > 0.1 and c_bucket > bool 1e3 or absent(d)",
    );
    assert_eq!(
        u.metrics,
        ["a_total", "b", "c_bucket", "d"].map(String::from).into()
    );
    assert_eq!(
        u.matchers,
        vec![
            ("a_total".into(), "result".into(), "!=".into(), "ok".into()),
            ("a_total".into(), "node".into(), "=~".into(), "n.*".into()),
        ]
    );
    assert_eq!(
        u.grouping,
        ["result", "node", "kind"].map(String::from).into()
    );
}

/// A scrape: each series name with its label names and the values seen for each.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Reads an OpenMetrics (or Prometheus text) exposition. A family with no sample yet (a
/// labelled counter nothing has counted) is added under the names Prometheus stores its
/// samples as (`_total` for a counter; `_bucket`, `_sum`, `_count` for a histogram).
fn read_exposition(text: &str) -> Scrape {
    let mut scrape = Scrape::new();
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            families.push((w.next().unwrap().to_string(), w.next().unwrap().to_string()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = scrape.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let c: Vec<char> = line[end + 1..].chars().collect();
            let mut i = 0;
            while i < c.len() && c[i] != '}' {
                let eq = (i..c.len()).find(|&j| c[j] == '=').unwrap();
                let name: String = c[i..eq].iter().collect();
                let mut value = String::new();
                let mut j = eq + 2;
                while c[j] != '"' {
                    if c[j] == '\\' {
                        j += 1;
                    }
                    value.push(c[j]);
                    j += 1;
                }
                labels
                    .entry(name.trim().to_string())
                    .or_default()
                    .insert(value);
                i = j + 1;
                if c.get(i) == Some(&',') {
                    i += 1;
                }
            }
        }
    }
    for (family, kind) in families {
        let names: Vec<String> = match kind.as_str() {
            "counter" => vec![format!("{family}_total")],
            "histogram" | "gaugehistogram" => ["_bucket", "_sum", "_count"]
                .map(|s| format!("{family}{s}"))
                .into(),
            "summary" => vec![
                family.clone(),
                format!("{family}_sum"),
                format!("{family}_count"),
            ],
            "info" => vec![format!("{family}_info")],
            _ => vec![family.clone()],
        };
        for n in names {
            scrape.entry(n).or_default();
        }
    }
    scrape
}

#[test]
fn the_exposition_reader_knows_suffixes_and_labels() {
    let s = read_exposition(
        "# TYPE x counter\n# TYPE y_seconds histogram\ny_seconds_bucket{le=\"0.5\"} 1\n\
         y_seconds_count 1\n# TYPE z gauge\nz{node=\"a\\\"b\",kind=\"memory\"} 1\n# EOF\n",
    );
    assert!(s.contains_key("x_total") && !s.contains_key("x"));
    assert!(s.contains_key("y_seconds_bucket") && s.contains_key("y_seconds_sum"));
    assert_eq!(s["y_seconds_bucket"]["le"], ["0.5".to_string()].into());
    assert_eq!(s["z"]["node"], ["a\"b".to_string()].into());
    assert_eq!(s["z"]["kind"], ["memory".to_string()].into());
}

/// Series the rules may use that the daemon does not export: Prometheus's own per target.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_rules_use_is_in_a_real_daemons_metrics() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let admin = cluster.path().join("admin.sock");
    let proxy = cluster.path().join("proxy.sock");
    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args());
    for a in [
        "--admin-uds",
        admin.to_str().unwrap(),
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--health-probe",
        "none",
    ] {
        args.push(a.to_string());
    }
    let d = Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    // One CONNECT, so that the series counted per request have a sample.
    let (_stream, head) = support::connect_uds(&proxy, &format!("{}:{HTTP_PORT}", node.addr));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (code, text) = request(
        &Endpoint::Unix(admin.clone()),
        "GET",
        "/metrics",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{text}");
    let scrape = read_exposition(&text);

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for r in rules() {
        let name = r["alert"].as_str().unwrap();
        let uses = read_promql(r["expr"].as_str().unwrap());
        let mut labels: BTreeSet<String> = TARGET_LABELS.map(String::from).into();
        for m in &uses.metrics {
            if PROMETHEUS_SERIES.contains(&m.as_str()) {
                continue;
            }
            used.insert(m.clone());
            match scrape.get(m) {
                Some(l) => labels.extend(l.keys().cloned()),
                None => problems.push(format!("{name}: no metric {m} in /metrics")),
            }
        }
        for (m, label, op, value) in &uses.matchers {
            if PROMETHEUS_SERIES.contains(&m.as_str()) || TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(values) = scrape.get(m).and_then(|l| l.get(label)) else {
                problems.push(format!("{name}: {m} has no label {label} in /metrics"));
                continue;
            };
            if (op == "=" || op == "!=") && !values.contains(value) {
                problems.push(format!(
                    "{name}: {m}{{{label}{op}\"{value}\"}}: /metrics has only {values:?}"
                ));
            }
        }
        for g in &uses.grouping {
            if !labels.contains(g) {
                problems.push(format!(
                    "{name}: groups by {g}, a label none of its metrics has"
                ));
            }
        }
        // What the annotations name: metrics, and the labels of the alert.
        for text in r["annotations"].as_object().unwrap().values() {
            let text = text.as_str().unwrap();
            for (i, _) in text.match_indices("kube_ssh_tunnel_") {
                let m: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !scrape.contains_key(&m) {
                    problems.push(format!("{name}: its annotation names {m}, not in /metrics"));
                }
            }
            for (i, _) in text.match_indices("$labels.") {
                let l: String = text[i + 8..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !labels.contains(&l) {
                    problems.push(format!(
                        "{name}: its annotation uses $labels.{l}, a label its metrics lack"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n/metrics was:\n{text}",
        problems.join("\n")
    );
    assert!(used.len() >= 8, "the rules use {used:?}");
}

/// A Prometheus server started by a test, stopped by PID when dropped.
struct PrometheusServer {
    child: std::process::Child,
    log: PathBuf,
    addr: String,
}

impl PrometheusServer {
    /// Starts `prometheus` with `config`, its data in `dir`, on a free loopback port.
    fn start(config: &Path, dir: &Path) -> PrometheusServer {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        // One file for both streams (two creates would overwrite each other's bytes).
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus ({e}): it comes with Debian's prometheus package \
                     (apt-get install -y --no-install-recommends prometheus; scripts/test installs it)"
                )
            });
        PrometheusServer { child, log, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` of its HTTP API: the JSON body's `data`, or None (not up yet, or not 200).
    fn api(&self, path: &str) -> Option<Value> {
        use std::io::{Read, Write};
        let addr = self.addr.parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return None;
        }
        let v: Value = serde_json::from_str(body).ok()?;
        Some(v["data"].clone())
    }

    /// The instant vector of `query` (a metric name, no characters to escape).
    fn query(&self, query: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={query}"))
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The alerts now pending or firing: (alert name, node label or "", state).
    fn alerts(&self) -> BTreeSet<(String, String, String)> {
        let alerts = self
            .api("/api/v1/alerts")
            .and_then(|d| d["alerts"].as_array().cloned())
            .unwrap_or_default();
        alerts
            .iter()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
                (
                    label("alertname"),
                    label("node"),
                    a["state"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_with_the_example_and_evaluates_the_rules() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = cluster.path().join("proxy.sock");
    // The admin socket too (`run` always serves one): in the test's directory, never the
    // system default, which another test or a real daemon may hold.
    let admin_sock = cluster.path().join("admin.sock");
    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args());
    for a in [
        "--admin-uds",
        admin_sock.to_str().unwrap(),
        "--admin-listen",
        &admin,
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--health-probe",
        "none",
        "--keepalive-interval",
        "1s",
        "--keepalive-count",
        "3",
        "--backoff-max",
        "1s",
    ] {
        args.push(a.to_string());
    }
    let d = Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );

    // scrape.yaml as shipped, with the daemon's port and a 1 s interval for the test.
    let scrape = std::fs::read_to_string(dir().join("scrape.yaml")).unwrap();
    let mut job = scrape.clone();
    for (from, to) in [
        ("scrape_interval: 30s", "scrape_interval: 1s".to_string()),
        ("scrape_timeout: 10s", "scrape_timeout: 1s".to_string()),
        ("127.0.0.1:10271", admin.clone()),
    ] {
        assert!(job.contains(from), "scrape.yaml has {from}");
        job = job.replace(from, &to);
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n{job}",
            dir().join("alerts.yaml").display()
        ),
    )
    .unwrap();
    let prom = PrometheusServer::start(&config, tmp.path());
    let limit = Duration::from_secs(60);

    // It scrapes the daemon: up is 1, and the node's tunnel is up.
    let scraped = support::wait_until(limit, || {
        prom.query("up").iter().any(|s| s["value"][1] == "1")
            && prom
                .query("kube_ssh_tunnel_tunnel_up")
                .iter()
                .any(|s| s["metric"]["node"] == "node-1" && s["value"][1] == "1")
    });
    assert!(scraped, "{:?}\n{}", prom.query("up"), prom.log());

    // Every rule evaluates without an error, and on a healthy daemon only the deprecation
    // notice fires.
    let rules_ok = || {
        let groups = prom
            .api("/api/v1/rules")
            .and_then(|d| d["groups"].as_array().cloned())
            .unwrap_or_default();
        let rules: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules.len() == self::rules().len()
            && rules
                .iter()
                .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z")
    };
    let deprecated: (String, String, String) = (
        "KubeSshTunnelDeprecatedMode".into(),
        "".into(),
        "firing".into(),
    );
    let healthy = support::wait_until(limit, || rules_ok() && prom.alerts().contains(&deprecated));
    assert!(
        healthy,
        "rules: {:?}\nalerts: {:?}\n{}",
        prom.api("/api/v1/rules"),
        prom.alerts(),
        prom.log()
    );
    // Only firing alerts count, and the set is polled: a scrape that took too long on a
    // loaded machine may make `KubeSshTunnelDown` pending, or the deprecation notice stale,
    // for a moment, which says nothing about the rules.
    let firing = || -> BTreeSet<_> {
        prom.alerts()
            .into_iter()
            .filter(|a| a.2 == "firing")
            .collect()
    };
    let only_deprecated: BTreeSet<_> = [deprecated.clone()].into();
    assert!(
        support::wait_until(limit, || firing() == only_deprecated),
        "firing: {:?}\n{}",
        firing(),
        prom.log()
    );

    // The node's sshd dies: its tunnel goes down and the node-down alert is pending (it
    // fires after its 5 minutes).
    node.kill_sshd();
    let down: (String, String, String) = (
        "KubeSshTunnelNodeDown".into(),
        "node-1".into(),
        "pending".into(),
    );
    let pending = support::wait_until(limit, || prom.alerts().contains(&down));
    assert!(pending, "alerts: {:?}\n{}", prom.alerts(), d.log());
}
