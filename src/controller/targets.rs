//! Where the flag is written in the cluster: a ConfigMap holding a flagd document, or an
//! OpenFeature Operator `FeatureFlag` (whose `spec.flagSpec` is one). Both are
//! [`FlagStore`]s versioned by `resourceVersion`: [`crate::flag_store::write_flag`]
//! merges Sluice's flag in and retries on a conflict; a document that is not flagd's is
//! refused before any write.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

pub use crate::flag_store::WRITE_ATTEMPTS;
use crate::flag_store::{FlagStore, Stored, Swap};
use crate::flagd::{FlagdError, json_kind};
use crate::reconcile::FlagWriteError;

/// The OpenFeature Operator's `FeatureFlag` resource.
pub fn feature_flag_resource() -> ApiResource {
    ApiResource {
        group: "core.openfeature.dev".into(),
        version: "v1beta1".into(),
        api_version: "core.openfeature.dev/v1beta1".into(),
        kind: "FeatureFlag".into(),
        plural: "featureflags".into(),
    }
}

/// Runs one API call with a timeout; failures become [`FlagWriteError::Unavailable`]
/// except the API status codes the caller handles (returned as `Err(Ok(status))`).
async fn call<T>(
    timeout: Duration,
    what: &str,
    future: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Result<kube::core::Status, FlagWriteError>> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(kube::Error::Api(status))) => Err(Ok(*status)),
        Ok(Err(error)) => Err(Err(FlagWriteError::Unavailable {
            category: "api",
            message: format!("{what}: {error}"),
        })),
        Err(_) => Err(Err(FlagWriteError::Unavailable {
            category: "timeout",
            message: format!("{what}: no answer within {timeout:?}"),
        })),
    }
}

fn api_failure(what: &str, status: &kube::core::Status) -> FlagWriteError {
    FlagWriteError::Unavailable {
        category: "api",
        message: format!(
            "{what}: the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
    }
}

/// The flagd document at `data[key]` of a ConfigMap, created (labelled as Sluice's) when
/// missing. Version: the `resourceVersion` read (`None`: no ConfigMap).
pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    key: String,
    timeout: Duration,
}

impl ConfigMapStore {
    /// The store of `data[key]` of the ConfigMap `namespace/name`; every API call gives up
    /// after `timeout`.
    pub fn new(client: Client, namespace: &str, name: &str, key: &str, timeout: Duration) -> Self {
        ConfigMapStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
            timeout,
        }
    }
}

impl FlagStore for ConfigMapStore {
    type Version = Option<ConfigMap>;

    fn describe(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    async fn read(&self) -> Result<Stored<Option<ConfigMap>>, FlagWriteError> {
        let what = self.describe();
        // configmaps: get
        let existing = match call(self.timeout, &what, self.api.get_opt(&self.name)).await {
            Ok(existing) => existing,
            Err(Ok(status)) => return Err(api_failure(&what, &status)),
            Err(Err(error)) => return Err(error),
        };
        if let Some(config_map) = &existing
            && config_map
                .binary_data
                .as_ref()
                .is_some_and(|b| b.contains_key(&self.key))
        {
            return Err(FlagWriteError::Document(FlagdError::NotAnObject {
                found: "binary data",
            }));
        }
        let document = existing
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .and_then(|d| d.get(&self.key))
            .cloned();
        Ok(Stored {
            version: existing,
            document,
        })
    }

    /// Replaces the ConfigMap read (its `resourceVersion` makes the API server answer 409
    /// if it changed), or creates it if there was none (409 if somebody did meanwhile).
    async fn swap(
        &self,
        version: &Option<ConfigMap>,
        document: &str,
    ) -> Result<Swap, FlagWriteError> {
        let what = self.describe();
        let result = match version {
            None => {
                let config_map = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "sluice".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([(self.key.clone(), document.to_owned())])),
                    ..ConfigMap::default()
                };
                // configmaps: create
                call(
                    self.timeout,
                    &what,
                    self.api.create(&PostParams::default(), &config_map),
                )
                .await
            }
            Some(existing) => {
                let mut config_map = existing.clone();
                config_map
                    .data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(self.key.clone(), document.to_owned());
                // configmaps: update (carries the resourceVersion read: a 409 if it changed)
                call(
                    self.timeout,
                    &what,
                    self.api
                        .replace(&self.name, &PostParams::default(), &config_map),
                )
                .await
            }
        };
        match result {
            Ok(_) => Ok(Swap::Done),
            Err(Ok(status)) if status.code == 409 => Ok(Swap::Conflict),
            Err(Ok(status)) => Err(api_failure(&what, &status)),
            Err(Err(error)) => Err(error),
        }
    }
}

/// The flagd document that `spec.flagSpec` of an OpenFeature `FeatureFlag` is. The
/// `FeatureFlag` must exist. Version: the `resourceVersion` read, which the write's JSON
/// patch tests.
pub struct FeatureFlagStore {
    api: Api<DynamicObject>,
    namespace: String,
    name: String,
    timeout: Duration,
}

impl FeatureFlagStore {
    /// The store of the `FeatureFlag` `namespace/name`; every API call gives up after
    /// `timeout`.
    pub fn new(client: Client, namespace: &str, name: &str, timeout: Duration) -> Self {
        FeatureFlagStore {
            api: Api::namespaced_with(client, namespace, &feature_flag_resource()),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            timeout,
        }
    }
}

/// The flagd document inside a `FeatureFlag` object: `spec.flagSpec` as JSON text (`None`
/// when it has none yet); a `spec` that is not an object is refused.
pub fn feature_flag_document(object: &Value) -> Result<Option<String>, FlagdError> {
    match object.get("spec") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(spec)) => match spec.get("flagSpec") {
            None | Some(Value::Null) => Ok(None),
            Some(flag_spec) => Ok(Some(flag_spec.to_string())),
        },
        Some(other) => Err(FlagdError::NotAnObject {
            found: json_kind(other),
        }),
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch that makes `spec.flagSpec.flags` of `object` hold the flags of
/// `document`, guarded by a `test` of the `resourceVersion` read. It adds only the flag
/// entries that differ (Sluice's, as merged), or the `flags`, `flagSpec` or `spec` the
/// object lacks; nothing else of the object is sent.
pub fn feature_flag_patch(object: &Value, document: &Value) -> Value {
    let version = object
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    let flags = document.get("flags").cloned().unwrap_or_else(|| json!({}));
    let mut ops =
        vec![json!({ "op": "test", "path": "/metadata/resourceVersion", "value": version })];
    let add = |path: String, value: Value| json!({ "op": "add", "path": path, "value": value });
    match (
        object.pointer("/spec/flagSpec/flags"),
        object.pointer("/spec/flagSpec"),
        object.get("spec"),
    ) {
        (Some(Value::Object(old)), _, _) => {
            if let Value::Object(new) = &flags {
                for (key, flag) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
                    let path = format!("/spec/flagSpec/flags/{}", pointer_segment(key));
                    ops.push(add(path, flag.clone()));
                }
            }
        }
        (_, Some(Value::Object(_)), _) => ops.push(add("/spec/flagSpec/flags".into(), flags)),
        (_, _, Some(Value::Object(_))) => {
            ops.push(add("/spec/flagSpec".into(), json!({ "flags": flags })))
        }
        _ => ops.push(add(
            "/spec".into(),
            json!({ "flagSpec": { "flags": flags } }),
        )),
    }
    Value::Array(ops)
}

impl FlagStore for FeatureFlagStore {
    type Version = Value;

    fn describe(&self) -> String {
        format!("FeatureFlag {}/{}", self.namespace, self.name)
    }

    async fn read(&self) -> Result<Stored<Value>, FlagWriteError> {
        let what = self.describe();
        // featureflags: get
        let object = match call(self.timeout, &what, self.api.get_opt(&self.name)).await {
            Ok(Some(object)) => object,
            Ok(None) => {
                return Err(FlagWriteError::Unavailable {
                    category: "not_found",
                    message: format!(
                        "{what} does not exist: create it (Sluice patches only its own flag in it)"
                    ),
                });
            }
            Err(Ok(status)) => return Err(api_failure(&what, &status)),
            Err(Err(error)) => return Err(error),
        };
        let object = serde_json::to_value(&object).map_err(|e| FlagWriteError::Unavailable {
            category: "api",
            message: format!("{what}: {e}"),
        })?;
        let document = feature_flag_document(&object)?;
        Ok(Stored {
            version: object,
            document,
        })
    }

    /// A JSON patch of the flags that differ ([`feature_flag_patch`]) with a `test` of the
    /// `resourceVersion` read: 409 or 422 (the test failed) if the object changed.
    async fn swap(&self, object: &Value, document: &str) -> Result<Swap, FlagWriteError> {
        let what = self.describe();
        let invalid = |e: serde_json::Error| FlagWriteError::Unavailable {
            category: "api",
            message: format!("{what}: {e}"),
        };
        let document: Value = serde_json::from_str(document).map_err(invalid)?;
        let patch: json_patch::Patch =
            serde_json::from_value(feature_flag_patch(object, &document)).map_err(invalid)?;
        // featureflags: patch (spec.flagSpec, with a test of the resourceVersion)
        match call(
            self.timeout,
            &what,
            self.api.patch(
                &self.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            ),
        )
        .await
        {
            Ok(_) => Ok(Swap::Done),
            // 409: conflict; 422: the `test` of the resourceVersion failed.
            Err(Ok(status)) if status.code == 409 || status.code == 422 => Ok(Swap::Conflict),
            Err(Ok(status)) => Err(api_failure(&what, &status)),
            Err(Err(error)) => Err(error),
        }
    }
}
