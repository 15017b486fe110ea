//! flagd's gRPC sync protocol, served: `flagd.sync.v1.FlagSyncService`, so flagd and every
//! in-process flagd provider take the flag documents of Sluice's targets straight from
//! Sluice and see a rollback the moment it is written (a mounted ConfigMap reaches pods
//! only after the kubelet's sync; a polled file after the poll).
//!
//! - `SyncFlags` streams the selected document: at once, then whenever it changes
//!   (whole documents; a client that falls behind gets the latest one).
//! - `FetchAllFlags` returns it once.
//! - `GetMetadata` (deprecated, but providers still call it first) answers empty metadata.
//!
//! The selector is the `Flagd-Selector` header, or else the request's `selector` field,
//! as flagd reads it: `source=<name>` or a bare `<name>` names a source, `flagSetId=...`
//! is refused (Sluice serves whole documents), and so is any other `key=` (a bare word
//! before the `=`; a path with a `=` in it is a name). What names a target is the [`Catalog`]'s
//! business: the flag file's path in standalone mode ([`files`]), the ConfigMap or
//! `FeatureFlag` in the cluster ([`cluster`]). A selector naming no target gets
//! `NOT_FOUND` naming it; a missing or malformed one `INVALID_ARGUMENT`.
//!
//! Documents come from the [`ChangeFeed`]: one follower per target somebody follows keeps
//! it up to date from the target, and Sluice's own writes are announced at once
//! ([`crate::flag_store::FlagStore::written`]). Other flags in a document are served as
//! the target holds them.
//!
//! TLS is optional (`--sync-tls-cert`, `--sync-tls-key`: PEM files, rustls).

pub mod cluster;
pub mod files;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::flag_store::{ChangeFeed, Document, Follower};

/// The code compiled from `proto/flagd/sync/v1/sync.proto` (build.rs): messages, the
/// server trait and a client.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flagd.sync.v1");
}

use proto::flag_sync_service_server::{FlagSyncService, FlagSyncServiceServer};

/// The gRPC metadata key flagd providers send the selector in.
pub const SELECTOR_HEADER: &str = "flagd-selector";

/// How long `FetchAllFlags` waits for a target's first read, and a request for the
/// catalog's first list of targets after a start.
pub const FIRST_READ_WAIT: Duration = Duration::from_secs(10);

/// The options of the sync server (`sluice standalone` and `sluice controller`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SyncArgs {
    /// Serve flagd's gRPC sync protocol (flagd.sync.v1.FlagSyncService) on this address,
    /// e.g. 0.0.0.0:8015 (flagd's sync port); connected flagd providers in in-process mode
    /// get every change of the targets' documents at once. Off when unset.
    #[arg(
        long = "sync-address",
        value_name = "ADDRESS",
        env = "SLUICE_SYNC_ADDRESS"
    )]
    pub address: Option<String>,
    /// The sync server's TLS certificate chain (PEM); with --sync-tls-key, the server
    /// speaks TLS only.
    #[arg(long = "sync-tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The sync server's TLS private key (PEM).
    #[arg(long = "sync-tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Why the sync server could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The listen address could not be bound.
    #[error("--sync-address {address}: cannot listen: {message}")]
    Listen {
        /// The address asked for.
        address: String,
        /// Why.
        message: String,
    },
    /// The TLS certificate or key could not be read or used.
    #[error("{option} {}: {message}", path.display())]
    Tls {
        /// `--sync-tls-cert` or `--sync-tls-key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// How a selector names a target, once parsed ([`parse_selector`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(pub String);

/// Why a selector names no target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// No target has that name; `known` lists (some of) the names that work.
    NotFound {
        /// A few selectors that do name a target.
        known: Vec<String>,
        /// How the catalog names targets, for the message.
        how: &'static str,
    },
    /// The selector is ambiguous or malformed for this catalog (the reason).
    Invalid(String),
}

/// The targets one Sluice serves and how their documents are followed.
pub trait Catalog: Send + Sync + 'static {
    /// The feed key of the target `selector` names.
    fn resolve(&self, selector: &Selector) -> Result<String, Unknown>;
    /// Keeps `follower`'s target up to date from the target itself until nobody follows
    /// it ([`Follower::unfollowed`]); spawned once per followed target.
    fn follow(&self, follower: Follower) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// The feed the catalog's targets are announced in.
    fn feed(&self) -> &ChangeFeed;
    /// True once the catalog knows its targets (the first scan or list after a start).
    fn ready(&self) -> watch::Receiver<bool>;
}

/// Reads a selector the way flagd does: `source=<name>` or a bare `<name>` (no `=`) names
/// a source; `flagSetId=` and other keys are refused; blank is refused.
pub fn parse_selector(text: &str) -> Result<Selector, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Status::invalid_argument(
            "no selector: set the provider's selector (FLAGD_SOURCE_SELECTOR, or the Flagd-Selector header) to the target whose flags you want",
        ));
    }
    match text.split_once('=') {
        Some(("source", name)) if !name.trim().is_empty() => Ok(Selector(name.trim().into())),
        Some(("source", _)) => Err(Status::invalid_argument(format!(
            "selector {text:?}: source= names no source"
        ))),
        Some(("flagSetId", _)) => Err(Status::invalid_argument(format!(
            "selector {text:?}: Sluice serves whole documents and does not select flag sets; select the document by its source (source=<target>)"
        ))),
        // Another `key=` (a bare word before the `=`) is a selector key Sluice does not
        // know: refused, not taken for a name that would then match nothing.
        Some((key, _)) if is_selector_key(key) => Err(Status::invalid_argument(format!(
            "selector {text:?}: unknown key {key:?}; Sluice reads source=<target> or a bare <target>"
        ))),
        // flagd treats a value without `=` as a source; a path may hold one too.
        _ => Ok(Selector(text.into())),
    }
}

/// Whether the text before a selector's `=` is a key (a bare word, like `source` or
/// `flagSetId`), not part of a name such as a path.
fn is_selector_key(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The selector of a request: the `Flagd-Selector` header wins over the (deprecated)
/// `selector` field, as in flagd.
fn request_selector<T>(request: &Request<T>, field: &str) -> Result<Selector, Status> {
    let header = request
        .metadata()
        .get(SELECTOR_HEADER)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Status::invalid_argument("the Flagd-Selector header is not text"))
        })
        .transpose()?
        .filter(|h| !h.trim().is_empty());
    parse_selector(header.as_deref().unwrap_or(field))
}

/// The `FlagSyncService` over a [`Catalog`].
#[derive(Clone)]
pub struct SyncService {
    catalog: Arc<dyn Catalog>,
    stop: Stop,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService").finish_non_exhaustive()
    }
}

impl SyncService {
    /// The service; its streams end when `stop` completes (so a shutdown is not held
    /// up by clients that never hang up).
    pub fn new(catalog: Arc<dyn Catalog>, stop: impl Future<Output = ()> + Send + 'static) -> Self {
        SyncService {
            catalog,
            stop: shared(stop),
        }
    }

    /// Follows the target `selector` names: a receiver of its document (starting its
    /// follower if nobody followed it yet), or the gRPC status that says why not.
    pub async fn follow(&self, selector: &Selector) -> Result<watch::Receiver<Document>, Status> {
        let mut ready = self.catalog.ready();
        // Right after a start the targets may not be listed yet: wait for them a little.
        let _ = tokio::time::timeout(FIRST_READ_WAIT, ready.wait_for(|r| *r)).await;
        let key = self.catalog.resolve(selector).map_err(|unknown| match unknown {
            Unknown::NotFound { known, how } => {
                let known = if known.is_empty() {
                    "none yet".to_owned()
                } else {
                    known
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Status::not_found(format!(
                    "selector {:?}: no flag document of this Sluice has that name ({how}; served now: {known})",
                    selector.0
                ))
            }
            Unknown::Invalid(reason) => {
                Status::invalid_argument(format!("selector {:?}: {reason}", selector.0))
            }
        })?;
        let (receiver, follower) = self.catalog.feed().subscribe(&key);
        if let Some(follower) = follower {
            tracing::debug!(target = %key, "following a flag document for the sync server");
            tokio::spawn(self.catalog.follow(follower));
        }
        Ok(receiver)
    }
}

type Stop = futures::future::Shared<Pin<Box<dyn Future<Output = ()> + Send>>>;

fn shared(stop: impl Future<Output = ()> + Send + 'static) -> Stop {
    let stop: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(stop);
    stop.shared()
}

fn peer(request: &Request<impl Sized>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "?".into(), |a| a.to_string())
}

type DocumentStream =
    Pin<Box<dyn Stream<Item = Result<proto::SyncFlagsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlagSyncService for SyncService {
    type SyncFlagsStream = DocumentStream;

    async fn sync_flags(
        &self,
        request: Request<proto::SyncFlagsRequest>,
    ) -> Result<Response<Self::SyncFlagsStream>, Status> {
        #[allow(deprecated)]
        let selector = request_selector(&request, &request.get_ref().selector)?;
        let mut receiver = self.follow(&selector).await?;
        tracing::info!(
            selector = %selector.0,
            peer = %peer(&request),
            provider_id = %request.get_ref().provider_id,
            "sync stream opened"
        );
        // The current document first, then every change.
        receiver.mark_changed();
        let documents = futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                receiver.changed().await.ok()?;
                let document = receiver.borrow_and_update().clone();
                if let Document::Present(text) = document {
                    let response = proto::SyncFlagsResponse {
                        flag_configuration: text.to_string(),
                        sync_context: None,
                    };
                    return Some((Ok(response), receiver));
                }
            }
        });
        let stream = documents.take_until(self.stop.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_all_flags(
        &self,
        request: Request<proto::FetchAllFlagsRequest>,
    ) -> Result<Response<proto::FetchAllFlagsResponse>, Status> {
        #[allow(deprecated)]
        let selector = request_selector(&request, &request.get_ref().selector)?;
        let mut receiver = self.follow(&selector).await?;
        let read = tokio::time::timeout(
            FIRST_READ_WAIT,
            receiver.wait_for(|d| *d != Document::Pending),
        )
        .await;
        let document = match read {
            Ok(Ok(document)) => document.clone(),
            Ok(Err(_)) | Err(_) => Document::Pending,
        };
        match document {
            Document::Present(text) => Ok(Response::new(proto::FetchAllFlagsResponse {
                flag_configuration: text.to_string(),
            })),
            Document::Missing => Err(Status::not_found(format!(
                "selector {:?}: the target holds no flag document yet",
                selector.0
            ))),
            Document::Unusable(reason) => Err(Status::failed_precondition(format!(
                "selector {:?}: {reason}",
                selector.0
            ))),
            Document::Pending => Err(Status::unavailable(format!(
                "selector {:?}: the target could not be read within {FIRST_READ_WAIT:?}",
                selector.0
            ))),
        }
    }

    async fn get_metadata(
        &self,
        _request: Request<proto::GetMetadataRequest>,
    ) -> Result<Response<proto::GetMetadataResponse>, Status> {
        // Providers merge this into every evaluation context: Sluice adds nothing.
        #[allow(deprecated)]
        Ok(Response::new(proto::GetMetadataResponse {
            metadata: Some(prost_types::Struct::default()),
        }))
    }
}

/// Binds the sync server's address and returns it with the server's future (which runs
/// until `stop` completes, ending every stream then).
pub async fn bind(
    args: &SyncArgs,
    address: &str,
    catalog: Arc<dyn Catalog>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send + 'static), SyncError> {
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Finds clients that went away without a word (a killed pod) so their streams end.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |option: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| SyncError::Tls {
                option,
                path: path.clone(),
                message: format!("cannot read: {e}"),
            })
        };
        let identity = tonic::transport::Identity::from_pem(
            read("--sync-tls-cert", cert)?,
            read("--sync-tls-key", key)?,
        );
        crate::prometheus::ensure_crypto_provider();
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| SyncError::Tls {
                option: "--sync-tls-cert",
                path: cert.clone(),
                message: format!(
                    "the certificate and key (--sync-tls-key {}) cannot be used: {}",
                    key.display(),
                    error_chain(&e)
                ),
            })?;
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| SyncError::Listen {
            address: address.to_owned(),
            message: e.to_string(),
        })?;
    let bound = listener.local_addr().map_err(|e| SyncError::Listen {
        address: address.to_owned(),
        message: e.to_string(),
    })?;
    let stop = shared(stop);
    let service = SyncService::new(catalog, stop.clone());
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = async move {
        let served = builder
            .add_service(FlagSyncServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, stop)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %error_chain(&e), "the sync server stopped");
        }
    };
    Ok((bound, serving))
}

/// An error with its sources, for messages.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_read_as_flagd_reads_them() {
        assert_eq!(
            parse_selector("source=/srv/flags.json").unwrap(),
            Selector("/srv/flags.json".into())
        );
        assert_eq!(
            parse_selector(" /srv/flags.json ").unwrap(),
            Selector("/srv/flags.json".into())
        );
        assert_eq!(
            parse_selector("shop/flags").unwrap(),
            Selector("shop/flags".into())
        );
        // A name may hold a `=`; a bare word before it is a key.
        assert_eq!(
            parse_selector("/srv/a=b.json").unwrap(),
            Selector("/srv/a=b.json".into())
        );
        for bad in [
            "",
            "  ",
            "source=",
            "flagSetId=payments",
            "foo=bar",
            "Source=x",
        ] {
            let status = parse_selector(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert!(
            parse_selector("flagSetId=x")
                .unwrap_err()
                .message()
                .contains("source=")
        );
    }

    #[test]
    fn the_header_wins_over_the_field() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(SELECTOR_HEADER, "source=a.json".parse().unwrap());
        assert_eq!(
            request_selector(&request, "b.json").unwrap(),
            Selector("a.json".into())
        );
        let request = Request::new(());
        assert_eq!(
            request_selector(&request, "b.json").unwrap(),
            Selector("b.json".into())
        );
    }
}
