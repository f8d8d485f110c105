//! Issuer node: holds one Shamir share per keyset, checks payment receipts and blinded points,
//! returns partial blind signatures, and appends every signing to a hash-chained log with
//! signed checkpoints that auditors read.
//!
//! Endpoints:
//! - `GET  /v1/info`: index, identity key, manifest digest, PK_i per keyset.
//! - `POST /v1/issue`: `IssueRequest` -> `IssueResponse` (signed by the identity key).
//! - `GET  /v1/log?after=SEQ&limit=N`: `LogPage` (entries + fresh checkpoint).
//! - `GET  /v1/log/checkpoints`: stored checkpoints.
//! - `GET  /health`, `GET /metrics`.
//!
//! Never depends on `coordinator`.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use ticketing_config::Settings;
use ticketing_config::cluster::{self, NodeBundle};
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::Digest32;
use ticketing_protocol::issue::{IssueRequest, IssueResponse};
use ticketing_protocol::log::{Checkpoint, LogPage, NodeKeyset, NodeStatus};
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::receipt::{blinded_digest, first_duplicate};
use ticketing_service::{Api, ApiError, Json, Metrics, Query, Route};

mod error;
pub mod signatory;
pub mod store;

pub use error::NodeError;
use signatory::{LocalSignatory, Signatory};
use store::{NodeStore, Recorded};

/// Largest `/v1/issue` body for `max_points` points: ~100 bytes per hex point plus the receipt.
fn issue_body_limit(max_points: u32) -> usize {
    4096 + 100 * max_points as usize
}

/// Batches up to this many points are signed on the async worker itself (< 1 ms of CPU).
const INLINE_SIGN_MAX: usize = 8;

/// A running node's shared state.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    manifest: Manifest,
    manifest_digest: Digest32,
    signatory: Box<dyn Signatory>,
    store: Box<dyn NodeStore>,
    max_points: u32,
    checkpoint_every: u64,
    http: ticketing_config::HttpSettings,
    metrics: Metrics,
    tickets_signed: Counter,
    refusals: Counter,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("index", &self.signatory.index())
            .field("manifest", &self.manifest_digest)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Assemble a node from its parts.
    pub fn new(
        manifest: Manifest,
        signatory: Box<dyn Signatory>,
        store: Box<dyn NodeStore>,
        settings: &Settings,
    ) -> Self {
        let metrics = Metrics::new("ticketing_node");
        let tickets_signed = metrics.counter("tickets_signed", "Blinded points signed");
        let refusals = metrics.counter("issue_refusals", "Issue requests refused");
        Self {
            inner: Arc::new(Inner {
                manifest_digest: manifest.digest(),
                manifest,
                signatory,
                store,
                max_points: settings.node.max_tickets_per_request,
                checkpoint_every: settings.node.checkpoint_every,
                http: settings.http.clone(),
                metrics,
                tickets_signed,
                refusals,
            }),
        }
    }

    /// Load node `index` from a cluster directory: manifest, bundle (every share checked
    /// against the manifest's PK_i), and its store (migrated).
    pub async fn open(
        settings: &Settings,
        cluster_dir: &Path,
        index: u16,
    ) -> Result<Self, NodeError> {
        let manifest = cluster::read_manifest(&cluster::manifest_path(cluster_dir))?;
        let bundle: NodeBundle = cluster::read_secret_json(
            &settings
                .secrets_in(cluster_dir)
                .join(cluster::node_bundle_name(index)),
        )?;
        bundle.check_for(&manifest, index, ticketing_service::now())?;
        let shares = bundle.verified_shares(&manifest)?;
        let signatory = LocalSignatory::new(bundle.index, bundle.identity()?, shares);
        let store = store::open(&settings.node_database_url(index)).await?;
        // A database that holds another node's log (a URL copied between nodes) is refused:
        // this node would serve and extend that node's chain under its own key.
        let checkpoints = store.checkpoints().await?;
        if let Some(other) = checkpoints.iter().find(|c| c.node.get() != index) {
            return Err(ticketing_config::ConfigError::Invalid {
                key: "node.database_url",
                reason: format!(
                    "the database holds node {}'s log, not node {index}'s; give each node its \
                     own database",
                    other.node.get()
                ),
            }
            .into());
        }
        Ok(Self::new(manifest, Box::new(signatory), store, settings))
    }

    /// This node's index.
    pub fn index(&self) -> u16 {
        self.inner.signatory.index().get()
    }

    /// The service's metrics (for a separate `http.metrics_listen`).
    pub fn metrics(&self) -> ticketing_service::Metrics {
        self.inner.metrics.clone()
    }

    /// The HTTP routes, with the shared layers.
    pub fn router(&self) -> Router {
        let max_points = self.inner.max_points;
        let routes = Api::new("ticketing node")
            .route(
                "/v1/info",
                Route::get("This node's index, identity key and keysets", info),
            )
            .route(
                "/v1/issue",
                Route::post("Sign the blinded points a payment receipt covers", issue).map(|r| {
                    // Sized to the largest legal request, so nobody makes the node decode (and
                    // subgroup-check) hundreds of points before the receipt is even verified.
                    r.layer(axum::extract::DefaultBodyLimit::max(issue_body_limit(
                        max_points,
                    )))
                }),
            )
            .route(
                "/v1/log",
                Route::get("A page of the hash-chained issuance log", log),
            )
            .route(
                "/v1/log/checkpoints",
                Route::get("The signed checkpoints of the issuance log", checkpoints),
            )
            .with_state(self.clone());
        let node = self.clone();
        let health: ticketing_service::HealthCheck = std::sync::Arc::new(move || {
            let node = node.clone();
            Box::pin(async move { node.inner.store.ping().await.map_err(|e| e.to_string()) })
        });
        ticketing_service::finish(routes, &self.inner.http, self.inner.metrics.clone(), health)
    }

    /// Serve until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        ticketing_service::serve(listener, router, shutdown).await
    }

    /// All the checks of the protocol, then the signing. See the crate docs.
    pub async fn issue(&self, req: IssueRequest, now: u64) -> Result<IssueResponse, NodeError> {
        let result = self.issue_inner(req, now).await;
        if result.is_err() {
            self.inner.refusals.inc();
        }
        result
    }

    async fn issue_inner(&self, req: IssueRequest, now: u64) -> Result<IssueResponse, NodeError> {
        let started = std::time::Instant::now();
        let keyset_id = self.check(&req, now).await?;
        let checked = started.elapsed();
        // Record before signing: a crash in between leaves a recorded receipt that the
        // wallet's retry (same receipt, same points) gets signed as a repeat.
        match self.inner.store.record(&req.receipt, now).await? {
            Recorded::Conflict => return Err(NodeError::ReceiptReused),
            Recorded::Repeat { .. } => {}
            Recorded::Fresh(entry) => {
                if entry.seq % self.inner.checkpoint_every == 0 {
                    self.checkpoint_at(entry.seq, entry.hash, now).await?;
                }
            }
        }
        let recorded = started.elapsed();
        let response = self
            .answer(&req.receipt.receipt, keyset_id, req.blinded)
            .await?;
        tracing::debug!(
            check_us = checked.as_micros(),
            record_us = (recorded - checked).as_micros(),
            sign_us = (started.elapsed() - recorded).as_micros(),
            "issue phases"
        );
        Ok(response)
    }

    /// Every check of the protocol before anything is recorded: the receipt's signature, its
    /// keyset on sale when it was sold, its validity (or an earlier record of it), the points
    /// against its count and digest. The keyset signed under, when all pass.
    async fn check(&self, req: &IssueRequest, now: u64) -> Result<KeysetId, NodeError> {
        let inner = &self.inner;
        let receipt = &req.receipt.receipt;
        req.receipt
            .verify(&inner.manifest.payments.key)
            .map_err(|_| NodeError::InvalidReceipt)?;
        let keyset = inner
            .manifest
            .keyset(&receipt.keyset_id)
            .ok_or_else(|| NodeError::UnknownKeyset(receipt.keyset_id.to_string()))?;
        // A sale is judged at the time it was made (the receipt's `issued_at`, signed by the
        // payments service), not when the wallet completes it: a purchase paid before its
        // keyset's window ended completes after the end too, within the receipt's validity.
        if !inner.manifest.sellable(keyset, receipt.issued_at) {
            return Err(NodeError::KeysetNotActive(keyset.id.to_string()));
        }
        if now >= receipt.expires_at {
            // The receipt's validity bounds when it can be honoured the first time. A receipt
            // this node already recorded (same points) is a retry of a sale it accepted: answer
            // it, or a wallet that waited out an outage would lose what it paid for.
            let recorded = inner.store.find(&receipt.receipt_id).await?;
            if recorded.is_none_or(|(_, digest)| digest != receipt.digest) {
                return Err(NodeError::ReceiptExpired(receipt.expires_at));
            }
        }
        if req.blinded.len() > inner.max_points as usize {
            return Err(NodeError::TooManyPoints {
                got: req.blinded.len(),
                max: inner.max_points,
            });
        }
        if req.blinded.len() != receipt.count as usize {
            return Err(NodeError::DigestMismatch(format!(
                "the receipt covers {} tickets, {} points were sent",
                receipt.count,
                req.blinded.len()
            )));
        }
        if let Some(i) = first_duplicate(&req.blinded) {
            return Err(NodeError::DuplicatePoint(i + 1));
        }
        if blinded_digest(&req.blinded) != receipt.digest {
            return Err(NodeError::DigestMismatch(
                "the points do not match the receipt's digest".into(),
            ));
        }
        if !inner.signatory.keysets().contains(&keyset.id) {
            return Err(NodeError::UnknownKeyset(keyset.id.to_string()));
        }
        Ok(keyset.id)
    }

    /// The partial signatures of `points` under this node's share of `keyset_id`, in an
    /// answer signed with its identity key.
    async fn answer(
        &self,
        receipt: &ticketing_protocol::receipt::Receipt,
        keyset_id: KeysetId,
        points: Vec<ticketing_crypto::issuance::BlindedPoint>,
    ) -> Result<IssueResponse, NodeError> {
        let inner = &self.inner;
        // ~90 µs of curve work per point: a few points are signed in place (cheaper than a
        // thread hand-off), larger batches on the blocking pool so the runtime stays responsive.
        let partials = if points.len() <= INLINE_SIGN_MAX {
            inner.signatory.sign_points(&keyset_id, &points)
        } else {
            let node = self.clone();
            tokio::task::spawn_blocking(move || {
                node.inner.signatory.sign_points(&keyset_id, &points)
            })
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
        }
        .ok_or_else(|| NodeError::UnknownKeyset(keyset_id.to_string()))?;
        inner.tickets_signed.inc_by(partials.len() as u64);
        let mut response = IssueResponse {
            node: inner.signatory.index(),
            receipt_id: receipt.receipt_id,
            keyset_id,
            digest: receipt.digest,
            partials: partials
                .iter()
                .map(|p| ticketing_protocol::issue::G1Hex(p.to_bytes()))
                .collect(),
            signature: ticketing_protocol::keys::Sig([0; 64]),
        };
        response.signature = inner.signatory.sign_message(&response.signing_bytes());
        Ok(response)
    }

    async fn checkpoint_at(
        &self,
        seq: u64,
        head: Digest32,
        now: u64,
    ) -> Result<Checkpoint, NodeError> {
        let mut cp = Checkpoint::unsigned(self.inner.signatory.index(), seq, head, now);
        cp.signature = self.inner.signatory.sign_message(&cp.signing_bytes());
        self.inner.store.save_checkpoint(&cp).await?;
        Ok(cp)
    }
}

async fn info(State(node): State<Node>) -> Json<NodeStatus> {
    let inner = &node.inner;
    let index = inner.signatory.index();
    let held = inner.signatory.keysets();
    Json(NodeStatus {
        index,
        identity_key: inner.signatory.identity(),
        manifest_digest: inner.manifest_digest,
        keysets: inner
            .manifest
            .keysets
            .iter()
            .filter(|k| held.contains(&k.id))
            .filter_map(|k| {
                k.public_key_share(index).map(|pk| NodeKeyset {
                    id: k.id,
                    public_key_share: pk.clone(),
                })
            })
            .collect(),
    })
}

async fn issue(
    State(node): State<Node>,
    Json(req): Json<IssueRequest>,
) -> Result<Json<IssueResponse>, ApiError> {
    let count = req.blinded.len();
    let result = node.issue(req, ticketing_service::now()).await;
    match &result {
        Ok(_) => tracing::info!(node = node.index(), count, "issued"),
        Err(e) => tracing::info!(node = node.index(), count, error = %e, "refused"),
    }
    Ok(Json(result?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct LogQuery {
    /// Entries after this sequence number (0: from the start).
    #[serde(default)]
    after: u64,
    /// At most this many entries (default 500).
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    500
}

async fn log(
    State(node): State<Node>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    if i64::try_from(q.after).is_err() {
        return Err(ApiError::new(
            ticketing_protocol::ErrorCode::Malformed,
            "`after` is out of range",
        ));
    }
    let store = &node.inner.store;
    let entries = store
        .entries(q.after, q.limit.clamp(1, 5000))
        .await
        .map_err(NodeError::from)?;
    let (seq, head) = store.head().await.map_err(NodeError::from)?;
    let checkpoint = node
        .checkpoint_at(seq, head, ticketing_service::now())
        .await?;
    Ok(Json(LogPage {
        entries,
        checkpoint,
    }))
}

async fn checkpoints(State(node): State<Node>) -> Result<Json<Vec<Checkpoint>>, ApiError> {
    let cps = node
        .inner
        .store
        .checkpoints()
        .await
        .map_err(NodeError::from)?;
    Ok(Json(cps))
}
