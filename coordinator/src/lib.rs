//! Coordinator: the atomic spent ledger, online redemption, offline sync and reconciliation,
//! the signed Bloom filter and deny list, validator device authentication, aggregate stats,
//! and the partner feed with its webhooks (ADR-0008).
//!
//! Endpoints (validator = device token, admin = admin token, auditor = read-only token,
//! partner = partner token, all `Authorization: Bearer`):
//! - `GET  /v1/manifest`, `GET /v1/bloom` (ETag / `If-None-Match` -> 304): public.
//! - `POST /v1/redeem` (`Scan`), `POST /v1/redeem/batch`, `POST /v1/sync`: validator.
//! - `POST /v1/admin/revoke`, `GET /v1/admin/deny`, `POST /v1/admin/bloom/rebuild`: admin.
//! - `GET /v1/admin/stats`, `GET /v1/admin/actions` (the access audit trail): admin or auditor.
//! - `GET /v1/partner/feed?after=&limit=`: partner (`partner.rs`); webhooks (`webhook.rs`).
//! - `GET /health`, `GET /metrics`.
//!
//! Background loops of [`Coordinator::serve`]: the Bloom rebuild, the issuance follower (node
//! logs -> `issued` events, [`Coordinator::follow_issuance`]) and webhook delivery
//! ([`Coordinator::deliver_webhooks`]); each is also callable directly.
//!
//! A scan goes through two stages shared by all requests (`pipeline.rs`): checks (parse,
//! keyset, window, epoch, holder signature, then one batched BLS verification for every
//! ticket waiting) and the ledger (one transaction for every scan waiting). Concurrent
//! requests are thereby verified and committed together; an answer is sent only after its
//! commit, and a request that hangs up does not stop its scans from completing.
//!
//! Never depends on `node`: node logs are read over HTTP with the protocol types.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use ticketing_config::cluster::{self, ServiceBundle};
use ticketing_config::{CoordinatorSettings, HttpSettings, Settings};
use ticketing_protocol::Id16;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::partner::{FeedQuery, PartnerFeed};
use ticketing_protocol::publication::BloomSnapshot;
use ticketing_protocol::redeem::{
    DenyEntry, DenyReason, KeysetStats, Rebuilt, RedeemBatch, RedeemBatchResponse, RedeemResponse,
    RevokeRequest, Revoked, Scan, Stats, SyncRequest, SyncResponse, SyncResult,
};
use ticketing_protocol::{ErrorCode, ProtocolError};
use ticketing_service::{Api, ApiError, Json, Metrics, Query, Route};
use tokio::sync::RwLock;

pub mod auth;
mod error;
mod issued;
pub mod partner;
mod pipeline;
mod publication;
pub mod store;
pub mod webhook;

pub use error::CoordinatorError;
pub use issued::FollowReport;
pub use publication::{Build, Published};
use store::{Device, Fare, Role, Store};
pub use webhook::{DeliveryReport, WebhookSecret};

/// A running coordinator's shared state.
#[derive(Debug, Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    manifest: Arc<Manifest>,
    key: SignKey,
    store: Arc<dyn Store>,
    settings: CoordinatorSettings,
    http: HttpSettings,
    metrics: Metrics,
    pipeline: pipeline::Pipeline,
    published: RwLock<Option<Arc<Published>>>,
    /// The filter kept up to date; held while a publication is made (one at a time).
    working: tokio::sync::Mutex<Option<publication::Working>>,
    /// This process among the coordinators sharing the database (the lease holder's id).
    instance: Id16,
    /// Whether it held the lease at its last attempt (logged when that changes).
    leading: std::sync::atomic::AtomicBool,
    /// Until when it holds the lease (0: it does not).
    lease_until: std::sync::atomic::AtomicU64,
    issued: issued::IssuanceFollower,
    webhooks: webhook::Deliverer,
    counters: Counters,
}

#[derive(Clone)]
pub(crate) struct Counters {
    pub(crate) accepted: Counter,
    pub(crate) rejected: Counter,
    pub(crate) synced: Counter,
    pub(crate) conflicts: Counter,
    pub(crate) rebuilds: Counter,
    pub(crate) full_rebuilds: Counter,
    pub(crate) issuance_events: Counter,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("manifest", &self.manifest.digest())
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Assemble a coordinator from its parts and publish a first snapshot (or load the newest
    /// one stored, so versions keep increasing across restarts).
    pub async fn new(
        manifest: Manifest,
        key: SignKey,
        store: Box<dyn Store>,
        settings: &Settings,
    ) -> Result<Self, CoordinatorError> {
        let metrics = Metrics::new("ticketing_coordinator");
        let counters = Counters {
            accepted: metrics.counter("redeem_accepted", "Online scans accepted"),
            rejected: metrics.counter("redeem_rejected", "Online scans rejected"),
            synced: metrics.counter("sync_recorded", "Offline scans recorded"),
            conflicts: metrics.counter(
                "sync_conflicts",
                "Offline scans recorded as duplicates or suspected sharing",
            ),
            rebuilds: metrics.counter("bloom_rebuilds", "Bloom snapshots published"),
            full_rebuilds: metrics.counter(
                "bloom_full_rebuilds",
                "Bloom filters built anew (a keyset ended, the filter outgrew its size, or an admin asked)",
            ),
            issuance_events: metrics.counter(
                "issuance_events",
                "Purchases recorded as issued events (seen in t node logs)",
            ),
        };
        let webhooks = webhook::Deliverer::new(
            settings.coordinator.webhook_timeout_ms,
            settings.coordinator.webhook_max_attempts,
            metrics.counter(
                "webhook_delivered",
                "Partner webhook events delivered (2xx)",
            ),
            metrics.counter("webhook_failed", "Partner webhook delivery attempts failed"),
            metrics.counter(
                "webhook_skipped",
                "Partner webhook events given up after the maximum attempts",
            ),
        );
        let manifest = Arc::new(manifest);
        let store: Arc<dyn Store> = Arc::from(store);
        let postgres = ticketing_service::db::backend_of(&settings.coordinator_database_url())
            == Some(ticketing_service::db::Backend::Postgres);
        let writers = if postgres { 4 } else { 1 };
        let pipeline = pipeline::Pipeline::start(manifest.clone(), &store, writers);
        let coordinator = Self {
            inner: Arc::new(Inner {
                issued: issued::IssuanceFollower::new(
                    &manifest,
                    &settings.coordinator.node_urls,
                    settings.http.request_timeout_ms,
                ),
                webhooks,
                manifest,
                key,
                store,
                settings: settings.coordinator.clone(),
                http: settings.http.clone(),
                metrics,
                pipeline,
                published: RwLock::new(None),
                working: tokio::sync::Mutex::new(None),
                instance: Id16::random(&mut rand::rng()),
                leading: std::sync::atomic::AtomicBool::new(false),
                lease_until: std::sync::atomic::AtomicU64::new(0),
                counters,
            }),
        };
        coordinator.follow_publication().await?;
        let now = ticketing_service::now();
        if coordinator.leads(now).await? {
            coordinator.publish(now, Build::Update).await?;
        }
        Ok(coordinator)
    }

    /// Load from a cluster directory: manifest, publication key, store (migrated).
    pub async fn open(settings: &Settings, cluster_dir: &Path) -> Result<Self, CoordinatorError> {
        let manifest = cluster::read_manifest(&cluster::manifest_path(cluster_dir))?;
        let bundle: ServiceBundle = cluster::read_secret_json(
            &settings
                .secrets_in(cluster_dir)
                .join(cluster::COORDINATOR_BUNDLE),
        )?;
        let key = bundle.sign_key_for(&manifest.coordinator.key, cluster::COORDINATOR_BUNDLE)?;
        let store = store::open(&settings.coordinator_database_url()).await?;
        Self::new(manifest, key, store, settings).await
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The store (tests and admin commands).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The service's metrics (for a separate `http.metrics_listen`).
    pub fn metrics(&self) -> ticketing_service::Metrics {
        self.inner.metrics.clone()
    }

    /// The HTTP routes, with the shared layers.
    // Long because it is the route table: one entry per endpoint with its OpenAPI description.
    pub fn router(&self) -> Router {
        let scan_limit = 4096 + 400 * self.inner.settings.max_scans_per_request as usize;
        let body_limit = || axum::extract::DefaultBodyLimit::max(scan_limit);
        let routes = Api::new("ticketing coordinator")
            .route(
                "/v1/manifest",
                Route::get("The cluster's public manifest", manifest),
            )
            .route(
                "/v1/bloom",
                Route::get("The signed filter of spent and denied serials", bloom)
                    .describe(|op, g| {
                        op.header("If-None-Match", "The ETag of the snapshot held");
                        op.header(
                            "Accept",
                            "`application/octet-stream` for the binary form (magic, version, \
                             build time, keysets, filter bytes, deny list, signature); with \
                             `since`, the answer may be a delta \
                             (`application/vnd.ticketing.bloom-delta`) instead",
                        );
                        op.response::<BloomSnapshot>(
                            g,
                            "200",
                            "The snapshot; its ETag is its version",
                        );
                        op.also_content("200", BINARY);
                        op.also_content("200", DELTA);
                        op.response_other("304", None, "The snapshot held is the latest");
                        op.response_other(
                            "503",
                            Some("application/json"),
                            "`unavailable`: none yet",
                        );
                    })
                    // gzip when the client takes it: a filter with room to spare is mostly zeros.
                    .map(|r| r.layer(tower_http::compression::CompressionLayer::new())),
            )
            .route(
                "/v1/redeem",
                Route::post("Redeem one scan (safe to retry)", redeem),
            )
            .route(
                "/v1/redeem/batch",
                Route::post("Redeem scans, one verdict each", redeem_batch)
                    .map(|r| r.layer(body_limit())),
            )
            .route(
                "/v1/sync",
                Route::post("Record scans accepted offline", sync).map(|r| r.layer(body_limit())),
            )
            .route(
                "/v1/admin/revoke",
                Route::post("Deny a ticket from now on", revoke),
            )
            .route("/v1/admin/deny", Route::get("The deny list", deny_list))
            .route(
                "/v1/admin/bloom/rebuild",
                Route::post(
                    "Publish the filter now (brought up to date, or rebuilt with `full`)",
                    rebuild,
                ),
            )
            .route(
                "/v1/admin/stats",
                Route::get("Distinct tickets redeemed per keyset", stats),
            )
            .route(
                "/v1/admin/actions",
                Route::get("The access audit trail: every admin action", actions_page),
            )
            .route(
                "/v1/partner/feed",
                Route::get(
                    "A partner's feed of issued and redeemed counts",
                    partner_feed,
                ),
            )
            .with_state(self.clone());
        let store = self.inner.store.clone();
        let health: ticketing_service::HealthCheck = Arc::new(move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        });
        ticketing_service::finish(routes, &self.inner.http, self.inner.metrics.clone(), health)
    }

    /// Serve until `shutdown` resolves, meanwhile rebuilding the Bloom snapshot (and pruning
    /// expired keysets) every `bloom_rebuild_seconds`, following the node logs every
    /// `issuance_poll_seconds` and delivering due webhooks every second.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let settings = &self.inner.settings;
        let me = self.clone();
        let maintenance = every(settings.bloom_rebuild_seconds, true, move || {
            let me = me.clone();
            async move {
                if let Err(e) = me.maintain(ticketing_service::now(), Build::Update).await {
                    tracing::warn!(error = %e, "periodic rebuild failed; serving the previous snapshot");
                }
            }
        });
        let me = self.clone();
        let follower = every(settings.issuance_poll_seconds, false, move || {
            let me = me.clone();
            async move {
                if !me.leads_or_warn(ticketing_service::now()).await {
                    return;
                }
                if let Err(e) = me.follow_issuance(ticketing_service::now()).await {
                    tracing::warn!(error = %e, "following the node logs failed; retrying");
                }
            }
        });
        let me = self.clone();
        let deliveries = every(1, false, move || {
            let me = me.clone();
            async move {
                if !me.leads_or_warn(ticketing_service::now()).await {
                    return;
                }
                if let Err(e) = me.deliver_webhooks(ticketing_service::now()).await {
                    tracing::warn!(error = %e, "webhook delivery pass failed; retrying");
                }
            }
        });
        let result = ticketing_service::serve(listener, router, shutdown).await;
        for task in [maintenance, follower, deliveries] {
            task.abort();
        }
        // Hand the once-only work over at once rather than when the lease lapses.
        let now = ticketing_service::now();
        self.inner
            .lease_until
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self
            .inner
            .store
            .lease(LEASE, &self.inner.instance, now, now)
            .await
        {
            tracing::warn!(error = %e, "could not release the lease; it lapses by itself");
        }
        result
    }

    /// Whether this coordinator does the work that runs once across the coordinators sharing
    /// its database (publishing the filter, following the node logs, delivering webhooks):
    /// takes or renews the lease. Every loop renews it, so it lapses only when its holder
    /// stops; another coordinator takes over within [`LEASE_SECONDS`].
    pub async fn leads(&self, now: u64) -> Result<bool, CoordinatorError> {
        use std::sync::atomic::Ordering;
        // Held with more than half of it left: no need to write (the webhook loop asks every
        // second; on SQLite each renewal is a write transaction).
        let until = self.inner.lease_until.load(Ordering::Relaxed);
        if now.saturating_add(LEASE_SECONDS / 2) < until {
            return Ok(true);
        }
        let renewed_until = now.saturating_add(LEASE_SECONDS);
        let held = self
            .inner
            .store
            .lease(LEASE, &self.inner.instance, now, renewed_until)
            .await?;
        self.inner
            .lease_until
            .store(if held { renewed_until } else { 0 }, Ordering::Relaxed);
        let was = self
            .inner
            .leading
            .swap(held, std::sync::atomic::Ordering::Relaxed);
        if held != was {
            if held {
                tracing::info!(
                    "this coordinator publishes the filter, follows the node logs and delivers webhooks"
                );
            } else {
                tracing::info!("another coordinator holds the lease: serving what it publishes");
            }
        }
        Ok(held)
    }

    async fn leads_or_warn(&self, now: u64) -> bool {
        self.leads(now).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not take or renew the lease; retrying");
            false
        })
    }

    /// Serve the newest snapshot stored, if newer than the one served (what a coordinator not
    /// holding the lease does each time; also the first thing each does at start).
    pub async fn follow_publication(&self) -> Result<Option<Arc<Published>>, CoordinatorError> {
        let mut working = self.inner.working.lock().await;
        let current = self.published().await;
        let Some((version, body)) = self.inner.store.latest_publication().await? else {
            return Ok(current);
        };
        if current.as_ref().is_some_and(|c| c.version >= version) {
            return Ok(current);
        }
        let snapshot: BloomSnapshot = serde_json::from_str(&body)
            .map_err(|e| CoordinatorError::Internal(format!("stored snapshot: {e}")))?;
        let steps = self.inner.store.publication_steps().await?;
        *working = publication::Working::resume(&snapshot);
        let published = Arc::new(Published::loaded(version, snapshot, body, steps));
        *self.inner.published.write().await = Some(published.clone());
        Ok(Some(published))
    }

    /// Read the nodes' logs for new purchases and record each receipt found in t of them as
    /// one `issued` event at time `now` (idempotent: a receipt is recorded once, ever).
    pub async fn follow_issuance(&self, now: u64) -> Result<FollowReport, CoordinatorError> {
        let report = self
            .inner
            .issued
            .follow(self.inner.store.as_ref(), now)
            .await?;
        if report.recorded > 0 {
            self.inner.counters.issuance_events.inc_by(report.recorded);
            tracing::info!(
                events = report.recorded,
                "purchases recorded from the node logs"
            );
        }
        Ok(report)
    }

    /// One pass of webhook delivery at time `now` (the signatures' `t`): every partner whose
    /// next attempt is due gets its events after its cursor, in order, until one fails.
    pub async fn deliver_webhooks(&self, now: u64) -> Result<DeliveryReport, CoordinatorError> {
        self.inner
            .webhooks
            .run(self.inner.store.as_ref(), &self.inner.key, now)
            .await
    }

    /// The webhook secret of partner `id` (derived from the coordinator's key).
    pub fn webhook_secret(&self, id: &ticketing_protocol::Id16) -> WebhookSecret {
        WebhookSecret::derive(&self.inner.key, id)
    }

    /// Prune keysets that ended more than `prune_after_seconds` ago, then bring the filter up
    /// to date (`Build::Update`) or build it anew (`Build::Full`).
    /// On a coordinator not holding the lease, nothing is published: it serves the newest
    /// snapshot stored.
    pub async fn maintain(&self, now: u64, how: Build) -> Result<Arc<Published>, CoordinatorError> {
        if !self.leads(now).await? {
            return self.follow_publication().await?.ok_or_else(|| {
                CoordinatorError::Refused(
                    ErrorCode::Unavailable,
                    "no snapshot published yet".into(),
                )
            });
        }
        let after = self.inner.settings.prune_after_seconds;
        let expired: Vec<_> = self
            .inner
            .manifest
            .keysets
            .iter()
            .filter(|k| k.params.valid_until.saturating_add(after) <= now)
            .map(|k| k.id)
            .collect();
        if !expired.is_empty() {
            let rows = self.inner.store.prune(&expired).await?;
            if rows > 0 {
                tracing::info!(keysets = expired.len(), rows, "pruned expired keysets");
            }
        }
        self.publish(now, how).await
    }

    /// Sign and publish a new snapshot if the spent/denied set changed; the current one
    /// otherwise (see [`publication`] for when the filter is rebuilt rather than updated).
    pub async fn publish(&self, now: u64, how: Build) -> Result<Arc<Published>, CoordinatorError> {
        let mut working = self.inner.working.lock().await;
        let current = self.inner.published.read().await.clone();
        // Taken out: if anything below fails, the next publication starts from the ledger.
        let sources = publication::Sources {
            store: self.inner.store.as_ref(),
            settings: &self.inner.settings,
            key: &self.inner.key,
        };
        let keysets = self
            .inner
            .manifest
            .keysets
            .iter()
            .filter(|k| k.params.valid_until > now)
            .map(|k| k.id)
            .collect();
        let started = std::time::Instant::now();
        let next = sources
            .publish(current.as_deref(), working.take(), keysets, how, now)
            .await?;
        let built = started.elapsed();
        let Some((published, step)) = next.published else {
            *working = Some(next.working);
            return current.ok_or_else(|| CoordinatorError::Internal("no snapshot".into()));
        };
        let stored = self
            .inner
            .store
            .save_publication(
                published.version,
                &published.body,
                &step,
                published.oldest_base(),
            )
            .await?;
        if !stored {
            // Another coordinator published this version (its lease and ours overlapped):
            // serve what it stored.
            drop(working);
            tracing::warn!(
                version = published.version,
                "version published elsewhere; following it"
            );
            return self
                .follow_publication()
                .await?
                .ok_or_else(|| CoordinatorError::Internal("no snapshot".into()));
        }
        *working = Some(next.working);
        let published = Arc::new(published);
        *self.inner.published.write().await = Some(published.clone());
        self.inner.counters.rebuilds.inc();
        if next.rebuilt {
            self.inner.counters.full_rebuilds.inc();
        }
        tracing::info!(
            version = published.version,
            rebuilt = next.rebuilt,
            changed_bytes = step.changes.len(),
            build_ms = built.as_millis(),
            store_ms = (started.elapsed() - built).as_millis(),
            "bloom snapshot published"
        );
        Ok(published)
    }

    /// The current snapshot.
    pub async fn published(&self) -> Option<Arc<Published>> {
        self.inner.published.read().await.clone()
    }

    /// Online redemption of `scans` at the coordinator's clock `now`.
    pub async fn redeem(
        &self,
        scans: Vec<Scan>,
        device: &Device,
        now: u64,
    ) -> Result<Vec<RedeemResponse>, CoordinatorError> {
        let results = self
            .inner
            .pipeline
            .run(pipeline::Request::online(scans, device.id, now))
            .await?;
        let answers = results.into_online();
        for a in &answers {
            match a.verdict {
                ticketing_protocol::redeem::Verdict::Accepted { .. } => {
                    self.inner.counters.accepted.inc()
                }
                ticketing_protocol::redeem::Verdict::Rejected { .. } => {
                    self.inner.counters.rejected.inc()
                }
            };
        }
        Ok(answers)
    }

    /// Offline sync of scans a validator accepted while offline.
    pub async fn sync(
        &self,
        scans: Vec<Scan>,
        device: &Device,
        now: u64,
    ) -> Result<Vec<SyncResult>, CoordinatorError> {
        let settings = &self.inner.settings;
        let results = self
            .inner
            .pipeline
            .run(pipeline::Request::offline(
                scans,
                device.id,
                now,
                settings.sharing_window_seconds,
                settings.prune_after_seconds,
            ))
            .await?;
        let answers = results.into_offline();
        for a in &answers {
            use ticketing_protocol::redeem::SyncStatus;
            match a.status {
                SyncStatus::Recorded => self.inner.counters.synced.inc(),
                SyncStatus::Conflict { .. } | SyncStatus::SuspectedSharing => {
                    self.inner.counters.conflicts.inc()
                }
                SyncStatus::AlreadySynced | SyncStatus::Rejected { .. } => 0,
            };
        }
        Ok(answers)
    }

    /// Revoke a serial (admin).
    pub async fn revoke(&self, req: &RevokeRequest, now: u64) -> Result<(), CoordinatorError> {
        if self.inner.manifest.keyset(&req.keyset_id).is_none() {
            return Err(CoordinatorError::Refused(
                ErrorCode::UnknownKeyset,
                "the keyset is not in the manifest".into(),
            ));
        }
        let fare = self
            .inner
            .manifest
            .keyset(&req.keyset_id)
            .map(|k| fare_of(&self.inner.manifest, &k.params.product))
            .unwrap_or_default();
        self.inner
            .store
            .deny(&req.keyset_id, &req.serial, DenyReason::Revoked, &fare, now)
            .await?;
        Ok(())
    }

    /// Per-keyset counts: issued (purchases the nodes' logs agree on, recorded by the
    /// follower, which runs first) against redeemed (ledger). `issued` is `None` when no
    /// node could be read.
    pub async fn stats(&self) -> Result<Stats, CoordinatorError> {
        let reached = match self.follow_issuance(ticketing_service::now()).await {
            Ok(report) => report.nodes_reached > 0,
            Err(e) => {
                tracing::warn!(error = %e, "following the node logs failed");
                false
            }
        };
        let mut keysets = Vec::with_capacity(self.inner.manifest.keysets.len());
        for k in &self.inner.manifest.keysets {
            let counts = self.inner.store.counts(&k.id).await?;
            let issued = if reached {
                Some(self.inner.store.issued(&k.id).await?)
            } else {
                None
            };
            keysets.push(KeysetStats {
                keyset_id: k.id,
                product: k.params.product.clone(),
                valid_from: k.params.valid_from,
                valid_until: k.params.valid_until,
                issued,
                redeemed: counts.redeemed,
                scans: counts.scans,
                denied: counts.denied,
            });
        }
        let flags = self.inner.store.flags().await?;
        Ok(Stats {
            keysets,
            suspected_sharing: flags.suspected_sharing,
            duplicates: flags.duplicates,
        })
    }

    /// Append an admin's action to the access audit trail, under its token's name.
    async fn trail(
        &self,
        now: u64,
        admin: &Device,
        action: &str,
        detail: &str,
    ) -> Result<(), CoordinatorError> {
        Ok(self
            .inner
            .store
            .record_action(now, &admin.name, action, detail)
            .await?)
    }

    /// The device a token hash belongs to.
    pub async fn device(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, CoordinatorError> {
        Ok(self.inner.store.device(token_hash).await?)
    }
}

/// A product's fare from the manifest (zero price and no currency for an unknown product).
pub(crate) fn fare_of(manifest: &Manifest, product: &str) -> Fare {
    manifest
        .product(product)
        .map_or_else(Fare::default, |p| Fare {
            product: p.name.clone(),
            price: p.price,
            currency: p.currency.clone(),
        })
}

/// Run `f` every `seconds` until aborted: the first run at once, or after one interval when
/// `skip_first`.
fn every<F, Fut>(seconds: u64, skip_first: bool, f: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // In the caller's span (the service's name), like its requests.
    let span = tracing::Span::current();
    let run = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(seconds.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if skip_first {
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            f().await;
        }
    };
    tokio::spawn(tracing::Instrument::instrument(run, span))
}

/// Register a device (or admin, or auditor) token directly in the coordinator's database (an
/// ops command run where the coordinator runs). The token is returned once; only its hash is
/// stored. A name with a live token is refused (`name_taken`) unless `replace`, which revokes
/// the old token in the same transaction.
pub async fn register(
    settings: &Settings,
    name: &str,
    role: Role,
    replace: bool,
) -> Result<(auth::Token, Device), CoordinatorError> {
    let name = device_name(name)?;
    let store = store::open(&settings.coordinator_database_url()).await?;
    let token = auth::Token::generate(role);
    let now = ticketing_service::now();
    let device = store
        .add_device(&auth::token_hash(token.expose()), name, role, now, replace)
        .await?;
    store
        .record_action(
            now,
            CLI_ACTOR,
            "device_registered",
            &format!(
                "{} `{name}` (device {}{})",
                role.as_str(),
                device.id,
                if replace {
                    ", replacing any live token of the name"
                } else {
                    ""
                }
            ),
        )
        .await?;
    Ok((token, device))
}

/// Every device token ever registered (names, roles, dates; never a token).
pub async fn devices(settings: &Settings) -> Result<Vec<store::DeviceInfo>, CoordinatorError> {
    let store = store::open(&settings.coordinator_database_url()).await?;
    Ok(store.devices().await?)
}

/// Revoke the live tokens named `name`: they get 401 from the next request on. Refused with
/// `not_found` when no live token has that name.
pub async fn revoke_device(settings: &Settings, name: &str) -> Result<u64, CoordinatorError> {
    let name = device_name(name)?;
    let store = store::open(&settings.coordinator_database_url()).await?;
    let now = ticketing_service::now();
    let revoked = store.revoke_device(name, now).await?;
    if revoked > 0 {
        store
            .record_action(
                now,
                CLI_ACTOR,
                "device_revoked",
                &format!("`{name}` ({revoked} token(s))"),
            )
            .await?;
    }
    if revoked == 0 {
        return Err(CoordinatorError::Refused(
            ErrorCode::NotFound,
            format!("no live device token is named `{name}` (see `ticketing validator list`)"),
        ));
    }
    Ok(revoked)
}

/// The actor of an ops command run on the coordinator's database (no token is involved).
pub const CLI_ACTOR: &str = "cli";

/// The access audit trail, oldest first (`GET /v1/admin/actions`).
pub async fn actions(
    settings: &Settings,
    after: u64,
    limit: u32,
) -> Result<Vec<ticketing_protocol::redeem::AdminAction>, CoordinatorError> {
    let store = store::open(&settings.coordinator_database_url()).await?;
    Ok(store.actions(after, limit).await?)
}

fn device_name(name: &str) -> Result<&str, CoordinatorError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(CoordinatorError::Refused(
            ErrorCode::Malformed,
            "a device name is 1 to 64 printable characters".into(),
        ));
    }
    Ok(name)
}

fn check_count(c: &Coordinator, n: usize) -> Result<(), ApiError> {
    let max = c.inner.settings.max_scans_per_request as usize;
    if n > max {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            format!("{n} scans in one request, at most {max} allowed"),
        ));
    }
    Ok(())
}

async fn manifest(State(c): State<Coordinator>) -> Json<Manifest> {
    Json((*c.inner.manifest).clone())
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct BloomQuery {
    /// The version held: the binary answer is then the delta from it to the current version
    /// when that is remembered and smaller (the full snapshot otherwise).
    since: Option<u64>,
}

async fn bloom(
    State(c): State<Coordinator>,
    Query(q): Query<BloomQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(p) = c.published().await else {
        return ApiError::new(ErrorCode::Unavailable, "no snapshot yet").into_response();
    };
    let etag = p.etag();
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let cache = HeaderValue::from_static("no-cache");
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    // Validators ask for the bytes (`Accept: application/octet-stream`): the filter is
    // most of the snapshot, and base64 in JSON would add a third to it.
    let binary = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(BINARY));
    let delta = binary
        .then(|| q.since.and_then(|v| p.delta_from(v)))
        .flatten();
    let (content_type, body) = if let Some(delta) = delta {
        (DELTA, axum::body::Body::from(delta))
    } else if binary {
        (BINARY, axum::body::Body::from(p.bytes.clone()))
    } else {
        ("application/json", axum::body::Body::from(p.body.clone()))
    };
    (
        [
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache),
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::VARY,
                HeaderValue::from_static("accept, accept-encoding"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The lease of the once-only work (see [`Coordinator::leads`]).
const LEASE: &str = "maintenance";
/// How long a lease lasts unless renewed (every loop renews it, the webhook loop every second).
pub const LEASE_SECONDS: u64 = 60;

/// The binary form of the snapshot.
const BINARY: &str = "application/octet-stream";
/// A delta from the version held to the current one.
const DELTA: &str = "application/vnd.ticketing.bloom-delta";

async fn redeem(
    State(c): State<Coordinator>,
    auth::Validator(device): auth::Validator,
    Json(scan): Json<Scan>,
) -> Result<Json<RedeemResponse>, ApiError> {
    let mut answers = c
        .redeem(vec![scan], &device, ticketing_service::now())
        .await?;
    answers
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no answer"))
}

async fn redeem_batch(
    State(c): State<Coordinator>,
    auth::Validator(device): auth::Validator,
    Json(batch): Json<RedeemBatch>,
) -> Result<Json<RedeemBatchResponse>, ApiError> {
    check_count(&c, batch.scans.len())?;
    let results = c
        .redeem(batch.scans, &device, ticketing_service::now())
        .await?;
    Ok(Json(RedeemBatchResponse { results }))
}

async fn sync(
    State(c): State<Coordinator>,
    auth::Validator(device): auth::Validator,
    Json(req): Json<SyncRequest>,
) -> Result<Json<SyncResponse>, ApiError> {
    check_count(&c, req.scans.len())?;
    let count = req.scans.len();
    let results = c.sync(req.scans, &device, ticketing_service::now()).await?;
    tracing::info!(count, "offline scans synced");
    Ok(Json(SyncResponse { results }))
}

async fn revoke(
    State(c): State<Coordinator>,
    auth::Admin(admin): auth::Admin,
    Json(req): Json<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let now = ticketing_service::now();
    c.revoke(&req, now).await?;
    c.trail(
        now,
        &admin,
        "ticket_revoked",
        &format!("a ticket of keyset {}", req.keyset_id),
    )
    .await?;
    tracing::info!("serial revoked");
    Ok(Json(Revoked { revoked: true }))
}

async fn deny_list(
    State(c): State<Coordinator>,
    _admin: auth::Admin,
) -> Result<Json<Vec<DenyEntry>>, ApiError> {
    Ok(Json(
        c.inner
            .store
            .deny_list()
            .await
            .map_err(CoordinatorError::from)?,
    ))
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct RebuildQuery {
    /// Build a new filter from the whole ledger (new seed; validators fetch it whole) instead
    /// of bringing the current one up to date.
    #[serde(default)]
    full: bool,
}

async fn rebuild(
    State(c): State<Coordinator>,
    auth::Admin(admin): auth::Admin,
    Query(q): Query<RebuildQuery>,
) -> Result<Json<Rebuilt>, ApiError> {
    let now = ticketing_service::now();
    let how = if q.full { Build::Full } else { Build::Update };
    let p = c.maintain(now, how).await?;
    let what = if q.full { "full rebuild" } else { "update" };
    c.trail(
        now,
        &admin,
        "filter_rebuilt",
        &format!("on demand ({what}), version {}", p.version),
    )
    .await?;
    Ok(Json(Rebuilt { version: p.version }))
}

/// `GET /v1/admin/actions?after=&limit=` (admin or auditor).
async fn actions_page(
    State(c): State<Coordinator>,
    _reader: auth::Reader,
    Query(q): Query<ActionsQuery>,
) -> Result<Json<ticketing_protocol::redeem::AdminActions>, ApiError> {
    let actions = c
        .inner
        .store
        .actions(q.after, q.limit.clamp(1, 1000))
        .await
        .map_err(CoordinatorError::from)?;
    Ok(Json(ticketing_protocol::redeem::AdminActions { actions }))
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct ActionsQuery {
    /// Entries after this id (0: from the first).
    #[serde(default)]
    after: u64,
    /// At most this many (default 1000).
    #[serde(default = "default_actions_limit")]
    limit: u32,
}

fn default_actions_limit() -> u32 {
    1000
}

async fn stats(
    State(c): State<Coordinator>,
    _reader: auth::Reader,
) -> Result<Json<Stats>, ApiError> {
    Ok(Json(c.stats().await?))
}

async fn partner_feed(
    State(c): State<Coordinator>,
    auth::PartnerAuth(partner): auth::PartnerAuth,
    Query(query): Query<FeedQuery>,
) -> Result<Json<PartnerFeed>, ApiError> {
    Ok(Json(partner::feed(&c, &partner, query).await?))
}

impl From<ProtocolError> for CoordinatorError {
    fn from(e: ProtocolError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Keep `Role` reachable from the crate root for the CLI.
pub use store::Role as TokenRole;
