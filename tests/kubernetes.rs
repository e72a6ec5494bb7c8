//! deploy/kubernetes/: the manifests against what the binary really reads and
//! serves. The YAML is parsed (serde_norway), never pattern-matched, and every
//! name the manifests share with the relay is checked against the library:
//! the ConfigMap's TOML is loaded by the relay's own config loader with the
//! Secret's values as the files the Deployment points at, the env var names
//! come from `UrlTarget`, and the probe paths are asked of a running relay.
//!
//! No cluster is involved: what Kubernetes itself would reject (a schema
//! error) is outside this test; what would make the relay fail in the pod is
//! inside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use outbox_relay::config::UrlTarget;
use serde_norway::Value;

use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::http::get;
use crate::support::relay::InProcess;
use crate::support::TestDb;

/// The relay container's name in deployment.yaml.
const RELAY: &str = "outbox-relay";

/// The one document of `deploy/kubernetes/<name>`, checked to be of `kind`.
fn manifest(name: &str, kind: &str) -> Value {
    let path = format!("{}/deploy/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: not YAML: {e}"));
    assert_eq!(str_at(&doc, &["kind"]), kind, "{path}");
    doc
}

/// The value at a path of mapping keys; panics naming the path when absent.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = cur.get(*key).unwrap_or_else(|| panic!("no {} in the manifest", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).as_sequence().unwrap_or_else(|| panic!("{} is not a list", path.join(".")))
}

/// The element of a list whose `name` is `name`.
fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no entry named {name:?} in {list:?}"))
}

/// The four manifests.
struct Manifests {
    config: Value,
    secret: Value,
    deployment: Value,
    monitor: Value,
}

impl Manifests {
    fn load() -> Manifests {
        Manifests {
            config: manifest("relay-config.yaml", "ConfigMap"),
            secret: manifest("secret.example.yaml", "Secret"),
            deployment: manifest("deployment.yaml", "Deployment"),
            monitor: manifest("podmonitor.yaml", "PodMonitor"),
        }
    }

    fn pod(&self) -> &Value {
        at(&self.deployment, &["spec", "template", "spec"])
    }

    fn relay(&self) -> &Value {
        named(seq_at(self.pod(), &["containers"]), RELAY)
    }

    /// The container port named `metrics`.
    fn metrics_port(&self) -> u16 {
        let port = named(seq_at(self.relay(), &["ports"]), "metrics");
        at(port, &["containerPort"]).as_u64().expect("containerPort is a number") as u16
    }

    /// Where the relay container mounts the pod volume that is `source`
    /// (`configMap` or `secret`) named `object`, and that volume.
    fn mount_of(&self, source: &str, name_key: &str, object: &str) -> (PathBuf, &Value) {
        let volume = seq_at(self.pod(), &["volumes"])
            .iter()
            .find(|v| v.get(source).and_then(|s| s.get(name_key)).and_then(Value::as_str) == Some(object))
            .unwrap_or_else(|| panic!("no {source} volume of {object:?} in the pod"));
        let vname = str_at(volume, &["name"]);
        let mount = named(seq_at(self.relay(), &["volumeMounts"]), vname);
        assert_eq!(mount.get("readOnly").and_then(Value::as_bool), Some(true), "{vname} is mounted read-only");
        (PathBuf::from(str_at(mount, &["mountPath"])), at(volume, &[source]))
    }

    /// The path inside the container of each key of the mounted object: an
    /// `items` list maps keys to paths, without one every key is a file.
    fn files(&self, source: &str, name_key: &str, object: &str, keys: &[String]) -> Vec<(String, PathBuf)> {
        let (dir, volume) = self.mount_of(source, name_key, object);
        match volume.get("items").and_then(Value::as_sequence) {
            Some(items) => items
                .iter()
                .map(|i| {
                    let key = str_at(i, &["key"]).to_owned();
                    assert!(keys.contains(&key), "the volume of {object} names key {key:?}, not in it: {keys:?}");
                    (key, dir.join(str_at(i, &["path"])))
                })
                .collect(),
            None => keys.iter().map(|k| (k.clone(), dir.join(k))).collect(),
        }
    }

    /// The ConfigMap's key `relay.toml`, and where the relay container sees it.
    fn config_file(&self) -> (PathBuf, String) {
        let data = at(&self.config, &["data"]).as_mapping().expect("ConfigMap data");
        let keys: Vec<String> = data.keys().filter_map(Value::as_str).map(str::to_owned).collect();
        let name = str_at(&self.config, &["metadata", "name"]);
        let files = self.files("configMap", "name", name, &keys);
        let (key, path) = files.into_iter().next().expect("the ConfigMap volume has a file");
        (path, str_at(&self.config, &["data", &key]).to_owned())
    }

    /// The Secret's keys, with their (placeholder) values and where the relay
    /// container sees each.
    fn secret_files(&self) -> Vec<(String, String, PathBuf)> {
        let data = at(&self.secret, &["stringData"]).as_mapping().expect("Secret stringData");
        let keys: Vec<String> = data.keys().filter_map(Value::as_str).map(str::to_owned).collect();
        let name = str_at(&self.secret, &["metadata", "name"]);
        self.files("secret", "secretName", name, &keys)
            .into_iter()
            .map(|(k, path)| (k.clone(), str_at(&self.secret, &["stringData", &k]).to_owned(), path))
            .collect()
    }

    /// The relay container's environment, as (name, value).
    fn env(&self) -> Vec<(String, String)> {
        seq_at(self.relay(), &["env"])
            .iter()
            .map(|e| (str_at(e, &["name"]).to_owned(), str_at(e, &["value"]).to_owned()))
            .collect()
    }

    /// The probe's path and port (a number, or the name of a container port).
    fn probe(&self, which: &str) -> (String, u16) {
        let get = at(self.relay(), &[which, "httpGet"]);
        let port = match at(get, &["port"]) {
            Value::Number(n) => n.as_u64().expect("a port number") as u16,
            Value::String(name) => {
                let port = named(seq_at(self.relay(), &["ports"]), name);
                at(port, &["containerPort"]).as_u64().expect("containerPort") as u16
            }
            other => panic!("{which}.httpGet.port: {other:?}"),
        };
        (str_at(get, &["path"]).to_owned(), port)
    }
}

/// The relay's config as the pod would load it: the ConfigMap's TOML at its
/// mount path, the URLs from the Secret's files through the Deployment's env.
/// The Secret's files are written to a temporary directory standing in for
/// the mount.
fn load_as_in_the_pod(m: &Manifests) -> outbox_relay::Config {
    let dir = tempfile::tempdir().unwrap();
    let secrets = m.secret_files();
    let env = m.env();
    let resolved: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| {
            let value = match secrets.iter().find(|(_, _, path)| path == Path::new(value)) {
                Some((key, content, _)) => {
                    let local = dir.path().join(key);
                    // A file made by `kubectl create secret --from-file` often ends in a newline.
                    std::fs::write(&local, format!("{content}\n")).unwrap();
                    local.to_string_lossy().into_owned()
                }
                None => value.clone(),
            };
            (name.clone(), value)
        })
        .collect();
    let (path, toml) = m.config_file();
    let lookup = |name: &str| resolved.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    outbox_relay::config::from_str(&toml, &path, &lookup)
        .unwrap_or_else(|e| panic!("the ConfigMap's relay.toml, with the Secret's URLs, is rejected:\n{e}"))
}

#[test]
fn the_configmap_is_a_valid_config_and_the_secret_supplies_both_urls() {
    let m = Manifests::load();
    let cfg = load_as_in_the_pod(&m);
    // The URLs are the Secret's, not the file's (which has none).
    let (_, toml) = m.config_file();
    assert!(!toml.contains("://"), "no URL (so no password) in the ConfigMap:\n{toml}");
    let broker = outbox_relay::config::brokers::urls(&cfg.broker.url);
    assert_eq!(broker.len(), 3, "broker-url lists the cluster's three nodes");
    assert!(cfg.source.url.expose().starts_with("postgres"), "source-url is a PostgreSQL URL");
    // Reachable from the kubelet and Prometheus, on the container port.
    assert!(cfg.http.listen.ip().is_unspecified(), "http.listen {} must not be loopback in a pod", cfg.http.listen);
    assert_eq!(cfg.http.listen.port(), m.metrics_port(), "http.listen's port is the container port `metrics`");
    // SIGTERM drains for shutdown_timeout: the kubelet must wait longer.
    let grace = at(m.pod(), &["terminationGracePeriodSeconds"]).as_u64().expect("terminationGracePeriodSeconds");
    assert!(
        grace > cfg.broker.shutdown_timeout.as_secs(),
        "terminationGracePeriodSeconds {grace} must exceed broker.shutdown_timeout {:?}",
        cfg.broker.shutdown_timeout
    );
}

#[test]
fn the_deployment_names_only_what_the_binary_reads() {
    let m = Manifests::load();
    let targets = [UrlTarget::Source, UrlTarget::Broker];
    let known: BTreeSet<&str> = targets.iter().flat_map(|t| [t.env_var(), t.file_env_var()]).collect();
    let env = m.env();
    for (name, _) in &env {
        assert!(known.contains(name.as_str()), "{name} is not a variable the relay reads ({known:?})");
    }
    // Each URL from a file in the mounted Secret, under one of its keys.
    let secrets = m.secret_files();
    for target in targets {
        let var = target.file_env_var();
        let (_, value) = env.iter().find(|(n, _)| n == var).unwrap_or_else(|| panic!("{var} is not set"));
        assert!(
            secrets.iter().any(|(_, _, path)| path == Path::new(value)),
            "{var}={value} is not a file of the mounted Secret: {secrets:?}"
        );
        assert!(
            !env.iter().any(|(n, _)| n == target.env_var()),
            "{} would put a URL in the pod spec",
            target.env_var()
        );
    }
    let keys: BTreeSet<&str> = secrets.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["broker-url", "source-url"]), "the Secret's keys");

    // `run --config FILE`, FILE being where the ConfigMap is mounted.
    let args: Vec<&str> = seq_at(m.relay(), &["args"]).iter().map(|a| a.as_str().expect("an arg")).collect();
    let (config_path, _) = m.config_file();
    assert_eq!(args, ["run", "--config", config_path.to_str().unwrap()], "the relay's args");

    // Non-root, read-only, no capabilities; resources set.
    let sc = at(m.relay(), &["securityContext"]);
    assert_eq!(at(sc, &["runAsNonRoot"]).as_bool(), Some(true));
    assert_eq!(at(sc, &["readOnlyRootFilesystem"]).as_bool(), Some(true));
    assert_eq!(at(sc, &["allowPrivilegeEscalation"]).as_bool(), Some(false));
    assert_eq!(seq_at(sc, &["capabilities", "drop"]), [Value::from("ALL")]);
    assert!(at(sc, &["runAsUser"]).as_u64().is_some_and(|u| u != 0), "a numeric non-root user");
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            at(m.relay(), &["resources", kind, res]);
        }
    }
}

#[test]
fn the_podmonitor_scrapes_the_metrics_port_of_the_deployments_pods() {
    let m = Manifests::load();
    let endpoints = seq_at(&m.monitor, &["spec", "podMetricsEndpoints"]);
    assert_eq!(endpoints.len(), 1);
    let port = str_at(&endpoints[0], &["port"]);
    named(seq_at(m.relay(), &["ports"]), port);
    assert_eq!(port, "metrics");
    assert_eq!(str_at(&endpoints[0], &["path"]), "/metrics");
    // Its selector matches the pod template's labels.
    let labels = at(&m.deployment, &["spec", "template", "metadata", "labels"]);
    let selector = at(&m.monitor, &["spec", "selector", "matchLabels"]).as_mapping().expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "the pods have label {k:?}={v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_and_scrape_paths_answer_on_a_streaming_relay() {
    let m = Manifests::load();
    let (ready, ready_port) = m.probe("readinessProbe");
    let (live, live_port) = m.probe("livenessProbe");
    let cfg = load_as_in_the_pod(&m);
    assert_eq!(ready_port, cfg.http.listen.port(), "readinessProbe port is http.listen's");
    assert_eq!(live_port, cfg.http.listen.port(), "livenessProbe port is http.listen's");
    let scrape = str_at(&seq_at(&m.monitor, &["spec", "podMetricsEndpoints"])[0], &["path"]).to_owned();

    // A relay on a free port (the manifest's 9187 may be taken on this machine).
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let (status, body) = get(relay.http, &ready).await;
    assert_eq!((status, body.trim()), (200, "active: streaming"), "{ready} of a streaming relay");
    let (status, body) = get(relay.http, &live).await;
    assert_eq!(status, 200, "{live} of a streaming relay: {body}");
    let (status, body) = get(relay.http, &scrape).await;
    assert_eq!(status, 200, "{scrape}");
    assert!(body.contains("outbox_relay_build_info"), "{scrape} is the relay's metrics:\n{body}");
    relay.stop().await.unwrap();
    db.drop_all().await;
}
