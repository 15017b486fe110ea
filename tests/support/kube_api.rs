//! A small in-memory Kubernetes API server behind kube's mock service (tower-test), in
//! the manner of kube-rs controller-rs's `ApiServerVerifier`: the client sends real HTTP
//! requests, this answers them from a store with real `resourceVersion` semantics
//! (a replace with a stale version is a 409, a JSON patch `test` that fails is a 422),
//! and every request is recorded so a test can check which calls were made, in order.
//!
//! Supported: GET, POST (create), PUT (replace), DELETE (finalizers respected) and PATCH
//! (JSON patch, merge patch, and server-side apply of `status` on `/status`). A hook
//! runs before each request and may change the store (another writer) or answer
//! instead (a failure).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// GET, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The Content-Type.
    pub content_type: String,
    /// The body as JSON (Null when empty).
    pub body: Value,
    /// The status code answered.
    pub status: u16,
}

impl Call {
    /// Whether the call changes something.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// `METHOD path` for assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What a hook may do with a request.
pub enum Hook {
    /// Handle it normally.
    Pass,
    /// Answer with this status code instead (the store is unchanged).
    Fail(u16),
    /// Handle it (the store changes), then answer with this status code anyway (the
    /// client thinks it failed: a crash after the write).
    FailAfter(u16),
}

type HookFn = Box<dyn FnMut(&Call, &mut BTreeMap<String, Value>) -> Hook + Send>;

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Value>,
    version: u64,
    calls: Vec<Call>,
    hook: Option<HookFn>,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// Splits `/api/v1/namespaces/ns/plural/name/sub` or `/apis/g/v/namespaces/...` into
/// (collection path, name, subresource).
fn split(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let base = if parts.first() == Some(&"api") { 2 } else { 3 };
    // base.. : namespaces, ns, plural, name?, sub?
    let plural_at = if parts.get(base) == Some(&"namespaces") {
        base + 2
    } else {
        base
    };
    let collection = format!("/{}", parts[..=plural_at.min(parts.len() - 1)].join("/"));
    let name = parts.get(plural_at + 1).map(|s| (*s).to_owned());
    let sub = parts.get(plural_at + 2).map(|s| (*s).to_owned());
    (collection, name, sub)
}

/// Whether the object stored at `key` belongs to `collection` (a namespaced collection,
/// or the same resource across all namespaces).
fn in_collection(collection: &str, key: &str) -> bool {
    let Some((parent, _)) = key.rsplit_once('/') else {
        return false;
    };
    if parent == collection {
        return true;
    }
    let parts: Vec<&str> = parent.split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if !collection.contains("/namespaces/") && parts.len() == i + 3 => {
            let mut all = parts[..i].to_vec();
            all.push(parts[i + 2]);
            all.join("/") == collection
        }
        _ => false,
    }
}

impl FakeApi {
    /// A new empty server and a client talking to it.
    pub fn start() -> (FakeApi, Client) {
        let api = FakeApi::default();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let server = server.clone();
                // Each request on its own task: a held watch never blocks the others.
                tokio::spawn(async move {
                    let response = server.handle(request).await;
                    send.send_response(response);
                });
            }
        });
        (api, Client::new(service, "default"))
    }

    /// Stores an object at its path (`/api/v1/namespaces/ns/configmaps/name`), with a
    /// fresh resourceVersion.
    pub fn insert(&self, path: &str, mut object: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.version += 1;
        object["metadata"]["resourceVersion"] = Value::from(inner.version.to_string());
        inner.objects.insert(path.to_owned(), object);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.inner.lock().unwrap().objects.get(path).cloned()
    }

    /// Changes the object at `path` in place (bumps its resourceVersion).
    pub fn modify(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut inner = self.inner.lock().unwrap();
        inner.version += 1;
        let version = inner.version.to_string();
        let object = inner.objects.get_mut(path).expect("the object exists");
        change(object);
        object["metadata"]["resourceVersion"] = Value::from(version);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Takes the calls so far (the log starts again empty).
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.inner.lock().unwrap().calls)
    }

    /// Installs a hook run before every request.
    pub fn set_hook(
        &self,
        hook: impl FnMut(&Call, &mut BTreeMap<String, Value>) -> Hook + Send + 'static,
    ) {
        self.inner.lock().unwrap().hook = Some(Box::new(hook));
    }

    /// Removes the hook.
    pub fn clear_hook(&self) {
        self.inner.lock().unwrap().hook = None;
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        let mut call = Call {
            method,
            path,
            query,
            content_type,
            body,
            status: 0,
        };
        if call.method == "GET"
            && (call.query.contains("watch=true") || call.query.contains("watch=1"))
        {
            return self.watch(call).await;
        }
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        let hook = match inner.hook.as_mut() {
            Some(hook) => hook(&call, &mut inner.objects),
            None => Hook::Pass,
        };
        let (code, answer) = match hook {
            Hook::Fail(code) => (code, status(code, "InternalError", "injected failure")),
            Hook::Pass => Self::serve(inner, &call),
            Hook::FailAfter(code) => {
                let _ = Self::serve(inner, &call);
                (
                    code,
                    status(code, "InternalError", "injected failure after the write"),
                )
            }
        };
        call.status = code;
        inner.calls.push(call);
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap()
    }

    /// A watch: after a short wait, every object of the collection changed since the
    /// requested resourceVersion, as MODIFIED events; then the stream ends (the client
    /// watches again from the last version it saw).
    async fn watch(&self, mut call: Call) -> Response<Body> {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let since: u64 = call
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (collection, _, _) = split(&call.path);
        let mut inner = self.inner.lock().unwrap();
        let mut changed: Vec<(u64, Value)> = inner
            .objects
            .iter()
            .filter(|(k, _)| in_collection(&collection, k))
            .filter_map(|(_, v)| {
                let version: u64 = v["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
                (version > since).then(|| (version, v.clone()))
            })
            .collect();
        changed.sort_by_key(|(v, _)| *v);
        let mut body = String::new();
        for (_, object) in changed {
            body.push_str(&json!({ "type": "MODIFIED", "object": object }).to_string());
            body.push('\n');
        }
        call.status = 200;
        inner.calls.push(call);
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(body.into_bytes()))
            .unwrap()
    }

    fn bump(inner: &mut Inner, object: &mut Value) {
        inner.version += 1;
        object["metadata"]["resourceVersion"] = Value::from(inner.version.to_string());
    }

    fn serve(inner: &mut Inner, call: &Call) -> (u16, Value) {
        let (collection, name, sub) = split(&call.path);
        match (call.method.as_str(), name) {
            ("GET", Some(name)) => match inner.objects.get(&format!("{collection}/{name}")) {
                Some(object) => (200, object.clone()),
                None => (404, status(404, "NotFound", &format!("{name} not found"))),
            },
            ("GET", None) => {
                let items: Vec<Value> = inner
                    .objects
                    .iter()
                    .filter(|(k, _)| in_collection(&collection, k))
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({ "metadata": { "resourceVersion": inner.version.to_string() }, "items": items }),
                )
            }
            ("POST", None) => {
                let mut object = call.body.clone();
                let name = object["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("generated-{}", inner.version));
                let key = format!("{collection}/{name}");
                if inner.objects.contains_key(&key) {
                    return (
                        409,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                object["metadata"]["name"] = Value::from(name);
                object["metadata"]["uid"] = Value::from(format!("uid-{}", inner.version));
                Self::bump(inner, &mut object);
                inner.objects.insert(key, object.clone());
                (201, object)
            }
            ("PUT", Some(name)) => {
                let key = format!("{collection}/{name}");
                let Some(current) = inner.objects.get(&key) else {
                    return (404, status(404, "NotFound", &format!("{name} not found")));
                };
                let sent = &call.body["metadata"]["resourceVersion"];
                if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
                    return (
                        409,
                        status(
                            409,
                            "Conflict",
                            "the object has been modified; please apply your changes to the latest version and try again",
                        ),
                    );
                }
                let mut object = call.body.clone();
                Self::bump(inner, &mut object);
                inner.objects.insert(key, object.clone());
                (200, object)
            }
            ("PATCH", Some(name)) => {
                let key = format!("{collection}/{name}");
                let Some(current) = inner.objects.get(&key).cloned() else {
                    return (404, status(404, "NotFound", &format!("{name} not found")));
                };
                let mut object = current.clone();
                if call.content_type.starts_with("application/json-patch+json") {
                    // As the API server does: a `test` for null passes on a missing path.
                    let ops: Vec<Value> = call
                        .body
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|op| {
                            !(op["op"] == "test"
                                && op["value"].is_null()
                                && op["path"]
                                    .as_str()
                                    .is_some_and(|p| object.pointer(p).is_none()))
                        })
                        .cloned()
                        .collect();
                    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
                        Ok(patch) => patch,
                        Err(e) => return (400, status(400, "BadRequest", &e.to_string())),
                    };
                    if let Err(e) = json_patch::patch(&mut object, &patch) {
                        return (422, status(422, "Invalid", &e.to_string()));
                    }
                } else if call
                    .content_type
                    .starts_with("application/merge-patch+json")
                {
                    json_patch::merge(&mut object, &call.body);
                } else if call
                    .content_type
                    .starts_with("application/apply-patch+yaml")
                {
                    // One field manager: applying `status` replaces it.
                    if sub.as_deref() == Some("status") {
                        object["status"] = call.body["status"].clone();
                    } else {
                        return (
                            400,
                            status(
                                400,
                                "BadRequest",
                                "apply of the main resource is not supported here",
                            ),
                        );
                    }
                } else {
                    return (415, status(415, "UnsupportedMediaType", &call.content_type));
                }
                // The status subresource changes only status; the main resource keeps it.
                if sub.as_deref() == Some("status") {
                    let mut kept = current.clone();
                    kept["status"] = object["status"].clone();
                    object = kept;
                } else {
                    object["status"] = current["status"].clone();
                    if object["status"].is_null() {
                        object.as_object_mut().unwrap().remove("status");
                    }
                }
                Self::bump(inner, &mut object);
                let gone = !object["metadata"]["deletionTimestamp"].is_null()
                    && object["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                if gone {
                    inner.objects.remove(&key);
                } else {
                    inner.objects.insert(key, object.clone());
                }
                (200, object)
            }
            ("DELETE", Some(name)) => {
                let key = format!("{collection}/{name}");
                let Some(object) = inner.objects.get(&key).cloned() else {
                    return (404, status(404, "NotFound", &format!("{name} not found")));
                };
                let finalizers = object["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    let mut object = object;
                    object["metadata"]["deletionTimestamp"] = Value::from("2026-11-24T12:00:00Z");
                    Self::bump(inner, &mut object);
                    inner.objects.insert(key, object.clone());
                    (200, object)
                } else {
                    inner.objects.remove(&key);
                    (200, status(200, "", "deleted"))
                }
            }
            _ => (405, status(405, "MethodNotAllowed", &call.method)),
        }
    }
}

/// A namespace, a fake API server, a client and a clock the test moves: reconciles go
/// through [`sluice::controller::reconcile_rollout`], the controller's own entry point,
/// each with a fresh [`State`] (as after a restart) unless the test keeps one.
pub struct Harness {
    /// The fake API server.
    pub api: FakeApi,
    /// A client talking to it.
    pub client: Client,
    /// The time the controller sees.
    pub now: Arc<Mutex<jiff::Timestamp>>,
}

/// The namespace of every test object.
pub const NAMESPACE: &str = "shop";

/// Where a FeatureRollout is stored.
pub fn rollout_path(name: &str) -> String {
    format!("/apis/sluice.dev/v1alpha1/namespaces/{NAMESPACE}/featurerollouts/{name}")
}

/// Where a ConfigMap is stored.
pub fn config_map_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
}

/// Where a FeatureFlag is stored.
pub fn feature_flag_path(name: &str) -> String {
    format!("/apis/core.openfeature.dev/v1beta1/namespaces/{NAMESPACE}/featureflags/{name}")
}

/// Where Leases are stored.
pub fn lease_path(name: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}")
}

/// A FeatureRollout object with this spec (YAML), carrying Sluice's finalizer.
pub fn rollout(name: &str, spec_yaml: &str) -> Value {
    let spec: Value = serde_yaml_ng::from_str(spec_yaml).expect("test spec parses");
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FeatureRollout",
        "metadata": {
            "name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}"),
            "generation": 1, "finalizers": [sluice::controller::FINALIZER],
        },
        "spec": spec,
    })
}

/// A ConfigMap holding `document` under `flags.json`.
pub fn config_map(name: &str, document: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "data": { "flags.json": document },
    })
}

impl Harness {
    /// A fresh server and a clock at `now`.
    pub fn new(now: jiff::Timestamp) -> Self {
        let (api, client) = FakeApi::start();
        Harness {
            api,
            client,
            now: Arc::new(Mutex::new(now)),
        }
    }

    /// The clock reading the harness' time.
    pub fn clock(&self) -> sluice::controller::Clock {
        let now = self.now.clone();
        Arc::new(move || *now.lock().unwrap())
    }

    /// Sets the time.
    pub fn set_now(&self, now: jiff::Timestamp) {
        *self.now.lock().unwrap() = now;
    }

    /// A fresh controller state (always leading), as after a restart.
    pub fn state(&self) -> Arc<sluice::controller::State> {
        Arc::new(sluice::controller::State::new(
            self.client.clone(),
            self.clock(),
            Some("test".into()),
        ))
    }

    /// The stored rollout, as the controller's watch would deliver it.
    pub fn object(
        &self,
        name: &str,
    ) -> Option<Arc<kube::core::DeserializeGuard<sluice::crd::FeatureRollout>>> {
        let value = self.api.get(&rollout_path(name))?;
        Some(Arc::new(
            serde_json::from_value(value).expect("a guard always parses"),
        ))
    }

    /// The stored rollout's status.
    pub fn status(&self, name: &str) -> Option<sluice::crd::FeatureRolloutStatus> {
        let value = self.api.get(&rollout_path(name))?;
        let status = value.get("status").filter(|s| !s.is_null())?;
        Some(serde_json::from_value(status.clone()).expect("a stored status parses"))
    }

    /// One reconcile of the stored rollout `name` with `state`.
    pub async fn reconcile_with(
        &self,
        name: &str,
        state: Arc<sluice::controller::State>,
    ) -> Result<kube::runtime::controller::Action, sluice::controller::Error> {
        let object = self.object(name).expect("the rollout exists");
        sluice::controller::reconcile_rollout(object, state).await
    }

    /// One reconcile with a fresh state.
    pub async fn reconcile(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, sluice::controller::Error> {
        self.reconcile_with(name, self.state()).await
    }

    /// The flag `key` in the ConfigMap's document.
    pub fn config_map_flag(&self, config_map: &str, key: &str) -> Option<Value> {
        let object = self.api.get(&config_map_path(config_map))?;
        let document = object["data"]["flags.json"].as_str()?;
        sluice::flagd::flag_in_document(document, key).expect("a flagd document")
    }
}
