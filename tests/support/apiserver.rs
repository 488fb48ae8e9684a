//! A stand-in Kubernetes API server for the Node watch, on loopback: it answers
//! `GET /api/v1/nodes` with a NodeList (the queued lists in turn; the last one repeats) and
//! `?watch=true` with a chunked stream of events that the test sends (one JSON object per
//! line, as the real API server streams them). Plus a kubeconfig that points at it.
//!
//! For `publish-host-key`: `POST .../selfsubjectreviews` answers who the bearer token is
//! (`users`), and `PATCH /api/v1/nodes/NAME` applies a JSON merge patch to that Node in the
//! current list and sends it as a MODIFIED event on the open watches. Like NodeRestriction, a
//! `system:node:X` user may patch Node X only (403 otherwise).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the stand-in answers, and what it was asked.
#[derive(Default)]
pub struct Api {
    pub lists: VecDeque<Value>,
    /// The open watches (every event goes to each).
    pub watches: Vec<mpsc::UnboundedSender<String>>,
    pub list_calls: usize,
    pub watch_calls: usize,
    /// While set, every request gets a 500 (an API server that is down or failing).
    pub failing: bool,
    /// Who each bearer token is (the SelfSubjectReview's user name).
    pub users: std::collections::HashMap<String, String>,
    /// The PATCH requests: (node, content type, body).
    pub patches: Vec<(String, String, Value)>,
    /// The last resource version handed out (a PATCH takes the next one).
    pub resource_version: u64,
}

pub type Shared = Arc<Mutex<Api>>;

/// A running stand-in; stops when dropped.
pub struct ApiServer {
    pub api: Shared,
    pub port: u16,
    pub kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Serves `lists` (in turn) and writes a kubeconfig for it into `dir`.
    pub async fn start(dir: &Path, lists: Vec<Value>) -> ApiServer {
        let api: Shared = Arc::new(Mutex::new(Api::default()));
        api.lock().unwrap().lists.extend(lists);
        let app = axum::Router::new()
            .route("/api/v1/nodes", axum::routing::get(nodes))
            .route("/api/v1/nodes/{name}", axum::routing::patch(patch_node))
            .route(
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                axum::routing::post(self_subject_review),
            )
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, port, "test-token");
        ApiServer {
            api,
            port,
            kubeconfig,
            task,
        }
    }

    /// Writes a kubeconfig for this server at `path` whose credential is `token`, and makes
    /// `token` the user `user` (e.g. `system:node:node-1`, a kubelet's).
    pub fn kubeconfig_for(&self, path: &Path, token: &str, user: &str) -> PathBuf {
        self.api
            .lock()
            .unwrap()
            .users
            .insert(token.to_string(), user.to_string());
        write_kubeconfig(path, self.port, token);
        path.to_path_buf()
    }

    /// Waits (bounded) until a watch is open.
    pub async fn wait_watch(&self, limit: Duration) -> bool {
        self.wait_watches(1, limit).await
    }

    /// Waits (bounded) until `count` watches are open.
    pub async fn wait_watches(&self, count: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while self.api.lock().unwrap().watches.len() < count {
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Makes every request fail with a 500 (`true`) or be answered again (`false`); failing
    /// also ends the open watches, so the client lists again and meets the failure.
    pub fn set_failing(&self, failing: bool) {
        let mut a = self.api.lock().unwrap();
        a.failing = failing;
        if failing {
            a.watches.clear();
        }
    }

    /// Sends one event line on every open watch (there must be one).
    pub fn send(&self, line: String) {
        let mut a = self.api.lock().unwrap();
        a.watches.retain(|tx| !tx.is_closed());
        assert!(!a.watches.is_empty(), "a watch is open");
        for tx in &a.watches {
            let _ = tx.send(line.clone());
        }
    }
}

fn write_kubeconfig(path: &Path, port: u16, token: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\nusers:\n- name: test\n  user:\n    token: {token}\n"
        ),
    )
    .unwrap();
}

/// The user of the request's bearer token ("" when unknown).
fn user_of(api: &Shared, headers: &axum::http::HeaderMap) -> String {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    api.lock()
        .unwrap()
        .users
        .get(token)
        .cloned()
        .unwrap_or_default()
}

fn status(code: u16, message: &str) -> axum::response::Response {
    (
        axum::http::StatusCode::from_u16(code).unwrap(),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})
            .to_string(),
    )
        .into_response()
}

async fn self_subject_review(
    State(api): State<Shared>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let user = user_of(&api, &headers);
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user, "groups": ["system:authenticated"]}},
    });
    (
        axum::http::StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        review.to_string(),
    )
        .into_response()
}

/// RFC 7386: `patch` merged into `target` (null removes a key).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

async fn patch_node(
    State(api): State<Shared>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    let user = user_of(&api, &headers);
    if let Some(node) = user.strip_prefix("system:node:")
        && node != name
    {
        return status(
            403,
            &format!(
                "nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""
            ),
        );
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Ok(patch) = serde_json::from_str::<Value>(&body) else {
        return status(400, "the patch is not JSON");
    };
    let mut a = api.lock().unwrap();
    a.patches.push((name.clone(), content_type, patch.clone()));
    a.resource_version = a.resource_version.max(1000) + 1;
    let rv = a.resource_version;
    let Some(list) = a.lists.front_mut() else {
        return status(404, "no nodes");
    };
    let Some(obj) = list["items"].as_array_mut().and_then(|items| {
        items
            .iter_mut()
            .find(|o| o["metadata"]["name"] == name.as_str())
    }) else {
        return status(404, &format!("nodes \"{name}\" not found"));
    };
    merge_patch(obj, &patch);
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let obj = obj.clone();
    list["metadata"]["resourceVersion"] = json!(rv.to_string());
    let line = event("MODIFIED", obj.clone());
    a.watches.retain(|tx| !tx.is_closed());
    for tx in &a.watches {
        let _ = tx.send(line.clone());
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        obj.to_string(),
    )
        .into_response()
}

async fn nodes(State(api): State<Shared>, uri: axum::http::Uri) -> axum::response::Response {
    let json_type = [(axum::http::header::CONTENT_TYPE, "application/json")];
    if api.lock().unwrap().failing {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            json_type,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"stand-in failing","code":500}"#,
        )
            .into_response();
    }
    let watch = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    if watch {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        {
            let mut a = api.lock().unwrap();
            a.watch_calls += 1;
            a.watches.push(tx);
        }
        let stream = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|o| o.map(|line| Ok::<_, std::io::Error>(format!("{line}\n"))))
        });
        return (json_type, axum::body::Body::from_stream(stream)).into_response();
    }
    let mut a = api.lock().unwrap();
    a.list_calls += 1;
    let list = if a.lists.len() > 1 {
        a.lists.pop_front().unwrap()
    } else {
        a.lists.front().cloned().unwrap_or(Value::Null)
    };
    (json_type, list.to_string()).into_response()
}

/// A NodeList at resource version `rv`.
pub fn node_list(rv: u32, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

/// A watch event line.
pub fn event(kind: &str, object: Value) -> String {
    json!({"type": kind, "object": object}).to_string()
}

/// A small Node object: `name` at `addr` with its SSH port annotated and one pod CIDR.
pub fn node_object(name: &str, addr: &str, ssh_port: u16, rv: u32, cidr: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "resourceVersion": rv.to_string(),
            "uid": format!("uid-{name}"),
            "labels": {"kubernetes.io/hostname": name},
            "annotations": {"kube-ssh-tunnel.io/ssh-port": ssh_port.to_string()},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": addr},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// A Node object the size of a real one (about 10 KB): the small one plus what a kubelet
/// and the control plane add — 10 labels, images, conditions with heartbeat times,
/// capacity, nodeInfo and managedFields — none of which the tunnel reads.
pub fn realistic_node_object(
    name: &str,
    addr: &str,
    ssh_port: u16,
    rv: u32,
    cidr: &str,
    heartbeat: u32,
) -> Value {
    let mut o = node_object(name, addr, ssh_port, rv, cidr);
    let labels: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            (
                format!("example.com/label-{i}"),
                Value::String(format!("value-{i}-{name}")),
            )
        })
        .collect();
    o["metadata"]["labels"] = Value::Object(labels);
    o["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = json!("0");
    o["metadata"]["annotations"]["volumes.kubernetes.io/controller-managed-attach-detach"] =
        json!("true");
    let time = format!(
        "2026-12-02T06:{:02}:{:02}Z",
        (heartbeat / 60) % 60,
        heartbeat % 60
    );
    o["metadata"]["managedFields"] = json!([
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": time,
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {
            "k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}, "f:status": {}},
            "k:{\"type\":\"MemoryPressure\"}": {"f:lastHeartbeatTime": {}},
            "k:{\"type\":\"DiskPressure\"}": {"f:lastHeartbeatTime": {}},
            "k:{\"type\":\"PIDPressure\"}": {"f:lastHeartbeatTime": {}}},
            "f:images": {}, "f:nodeInfo": {"f:bootID": {}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": time, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations":
            {"f:node.alpha.kubernetes.io/ttl": {}}}, "f:spec": {"f:podCIDR": {}, "f:podCIDRs": {".": {}}}}},
    ]);
    let images: Vec<Value> = (0..40)
        .map(|i| {
            json!({"names": [
                format!("registry.example.com/team-{i}/service-{i}@sha256:{:064x}", i * 7919 + 1),
                format!("registry.example.com/team-{i}/service-{i}:v1.{i}.0"),
            ], "sizeBytes": 10_000_000 + i * 123_457})
        })
        .collect();
    o["status"]["images"] = Value::Array(images);
    o["status"]["conditions"] = json!([
        {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": time, "lastTransitionTime": "2026-11-01T00:00:00Z", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
        {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": time, "lastTransitionTime": "2026-11-01T00:00:00Z", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
        {"type": "PIDPressure", "status": "False", "lastHeartbeatTime": time, "lastTransitionTime": "2026-11-01T00:00:00Z", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available"},
        {"type": "Ready", "status": "True", "lastHeartbeatTime": time, "lastTransitionTime": "2026-11-01T00:00:00Z", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
    ]);
    o["status"]["capacity"] = json!({"cpu": "16", "ephemeral-storage": "102350Mi", "hugepages-2Mi": "0", "memory": "65843240Ki", "pods": "110"});
    o["status"]["allocatable"] = json!({"cpu": "15800m", "ephemeral-storage": "94326086237", "hugepages-2Mi": "0", "memory": "64716840Ki", "pods": "110"});
    o["status"]["nodeInfo"] = json!({"architecture": "amd64", "bootID": format!("boot-{name}"),
        "containerRuntimeVersion": "containerd://1.7.22", "kernelVersion": "6.1.0-27-amd64",
        "kubeProxyVersion": "v1.33.1", "kubeletVersion": "v1.33.1", "machineID": format!("machine-{name}"),
        "operatingSystem": "linux", "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": format!("uuid-{name}")});
    o["status"]["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 10250}});
    o
}
