//! Where the flag is written in the cluster: a ConfigMap holding a flagd document, or an
//! OpenFeature Operator `FeatureFlag`. Both write only Sluice's key, with optimistic
//! concurrency, and refuse (no write) a document they cannot understand.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use crate::flagd::{FlagdError, json_kind, merge_flag};
use crate::reconcile::FlagWriteError;

/// How many times a write is attempted when other writers keep changing the object.
pub const WRITE_ATTEMPTS: u32 = 5;

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

fn conflicts(what: &str) -> FlagWriteError {
    FlagWriteError::Unavailable {
        category: "conflict",
        message: format!("{what}: other writers changed it {WRITE_ATTEMPTS} times in a row"),
    }
}

/// Writes `flag` under `flags[key]` of the flagd document at `data[data_key]` of the
/// ConfigMap `name`: read, merge ([`merge_flag`]), replace with the `resourceVersion`
/// read; on a conflict read again and merge again (bounded); create the ConfigMap when
/// missing. A document that is not flagd's is refused before any write. Returns whether
/// the document changed.
pub async fn write_config_map(
    client: Client,
    namespace: &str,
    name: &str,
    data_key: &str,
    key: &str,
    flag: &Value,
    timeout: Duration,
) -> Result<bool, FlagWriteError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let what = format!("ConfigMap {namespace}/{name}");
    for _ in 0..WRITE_ATTEMPTS {
        // configmaps: get
        let existing = match call(timeout, &what, api.get_opt(name)).await {
            Ok(existing) => existing,
            Err(Ok(status)) => return Err(api_failure(&what, &status)),
            Err(Err(error)) => return Err(error),
        };
        let Some(mut config_map) = existing else {
            let document = merge_flag(None, key, flag.clone())?;
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "sluice".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(data_key.to_owned(), document)])),
                ..ConfigMap::default()
            };
            // configmaps: create
            match call(
                timeout,
                &what,
                api.create(&PostParams::default(), &config_map),
            )
            .await
            {
                Ok(_) => return Ok(true),
                // Somebody created it in between: read it and merge.
                Err(Ok(status)) if status.code == 409 => continue,
                Err(Ok(status)) => return Err(api_failure(&what, &status)),
                Err(Err(error)) => return Err(error),
            }
        };
        if config_map
            .binary_data
            .as_ref()
            .is_some_and(|b| b.contains_key(data_key))
        {
            return Err(FlagWriteError::Document(FlagdError::NotAnObject {
                found: "binary data",
            }));
        }
        let current = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(data_key))
            .cloned();
        let merged = merge_flag(current.as_deref(), key, flag.clone())?;
        if current.as_deref() == Some(merged.as_str()) {
            return Ok(false);
        }
        config_map
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(data_key.to_owned(), merged);
        // configmaps: update (carries the resourceVersion read: a 409 if it changed)
        match call(
            timeout,
            &what,
            api.replace(name, &PostParams::default(), &config_map),
        )
        .await
        {
            Ok(_) => return Ok(true),
            Err(Ok(status)) if status.code == 409 => {
                tracing::debug!(config_map = %what, "conflict writing the flag: reading again");
                continue;
            }
            Err(Ok(status)) => return Err(api_failure(&what, &status)),
            Err(Err(error)) => return Err(error),
        }
    }
    Err(conflicts(&what))
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch that sets `spec.flagSpec.flags[key]` of `object` to `flag`, guarded by
/// a `test` of the `resourceVersion` read; `None` when the flag already says that.
/// Refuses a `spec`, `flagSpec` or `flags` that is not an object, or an entry under
/// Sluice's key that is not one.
pub fn feature_flag_patch(
    object: &Value,
    key: &str,
    flag: &Value,
) -> Result<Option<Value>, FlagdError> {
    let mut flag = flag.clone();
    let version = object
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    let mut ops =
        vec![json!({ "op": "test", "path": "/metadata/resourceVersion", "value": version })];
    let entry = format!("/spec/flagSpec/flags/{}", pointer_segment(key));
    let wrap = |path: &str, value: Value| json!({ "op": "add", "path": path, "value": value });
    match object.get("spec") {
        None | Some(Value::Null) => ops.push(wrap(
            "/spec",
            json!({ "flagSpec": { "flags": { key: flag } } }),
        )),
        Some(Value::Object(spec)) => match spec.get("flagSpec") {
            None | Some(Value::Null) => {
                ops.push(wrap("/spec/flagSpec", json!({ "flags": { key: flag } })))
            }
            Some(Value::Object(flag_spec)) => match flag_spec.get("flags") {
                None | Some(Value::Null) => {
                    let mut flags = Map::new();
                    flags.insert(key.to_owned(), flag);
                    ops.push(wrap("/spec/flagSpec/flags", Value::Object(flags)));
                }
                Some(Value::Object(flags)) => {
                    match flags.get(key) {
                        None => {}
                        Some(Value::Object(existing)) => {
                            if let (Some(metadata), Value::Object(new)) =
                                (existing.get("metadata"), &mut flag)
                                && !new.contains_key("metadata")
                            {
                                new.insert("metadata".to_owned(), metadata.clone());
                            }
                            if Value::Object(existing.clone()) == flag {
                                return Ok(None);
                            }
                        }
                        Some(other) => {
                            return Err(FlagdError::FlagNotAnObject {
                                key: key.to_owned(),
                                found: json_kind(other),
                            });
                        }
                    }
                    ops.push(wrap(&entry, flag));
                }
                Some(other) => {
                    return Err(FlagdError::FlagsNotAnObject {
                        found: json_kind(other),
                    });
                }
            },
            Some(other) => {
                return Err(FlagdError::NotAnObject {
                    found: json_kind(other),
                });
            }
        },
        Some(other) => {
            return Err(FlagdError::NotAnObject {
                found: json_kind(other),
            });
        }
    }
    Ok(Some(Value::Array(ops)))
}

/// Sets `spec.flagSpec.flags[key]` of the `FeatureFlag` `name` with a JSON patch that
/// touches only that key and is conditional on the `resourceVersion` read; on a conflict
/// (or a failed `test`) reads again (bounded). The `FeatureFlag` must exist. Returns
/// whether it changed.
pub async fn write_feature_flag(
    client: Client,
    namespace: &str,
    name: &str,
    key: &str,
    flag: &Value,
    timeout: Duration,
) -> Result<bool, FlagWriteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &feature_flag_resource());
    let what = format!("FeatureFlag {namespace}/{name}");
    for _ in 0..WRITE_ATTEMPTS {
        // featureflags: get
        let object = match call(timeout, &what, api.get_opt(name)).await {
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
        let Some(ops) = feature_flag_patch(&object, key, flag)? else {
            return Ok(false);
        };
        let patch: json_patch::Patch =
            serde_json::from_value(ops).map_err(|e| FlagWriteError::Unavailable {
                category: "api",
                message: format!("{what}: {e}"),
            })?;
        // featureflags: patch (a JSON patch of Sluice's key, with a test of resourceVersion)
        match call(
            timeout,
            &what,
            api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)),
        )
        .await
        {
            Ok(_) => return Ok(true),
            // 409: conflict; 422: the `test` of the resourceVersion failed.
            Err(Ok(status)) if status.code == 409 || status.code == 422 => {
                tracing::debug!(feature_flag = %what, "conflict writing the flag: reading again");
                continue;
            }
            Err(Ok(status)) => return Err(api_failure(&what, &status)),
            Err(Err(error)) => return Err(error),
        }
    }
    Err(conflicts(&what))
}
