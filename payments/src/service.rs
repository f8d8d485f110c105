//! The HTTP service: `POST /v1/checkout` turns a [`CheckoutRequest`] into a [`SignedReceipt`];
//! `GET /v1/receipts/{digest}` returns the receipt stored for a digest;
//! `GET /v1/audit/totals` returns the receipt totals per keyset, signed, for auditors.
//!
//! # Card checkout: reserve, charge, issue
//!
//! 1. **Reserve** the digest: one upsert stores a `paying` row (receipt id, keyset, count,
//!    amount, currency, a random lease token) unless the digest already has a row
//!    ([`Receipts::reserve`](crate::store::Receipts::reserve)). Two concurrent requests cannot both reserve.
//! 2. **Charge** the card with the digest as the processor's idempotency key, so charging the
//!    same digest again never moves money twice. A decline releases the reservation (the
//!    wallet may retry the same points with another card).
//! 3. **Issue**: sign the receipt and turn the `paying` row into it ([`Receipts::issue`](crate::store::Receipts::issue)).
//!
//! The three steps run in a spawned task: a wallet hanging up (which drops the request
//! handler) cannot stop them half-way. A request that finds the digest:
//!
//! - issued: gets that receipt (renewed first if it has expired), without paying;
//! - reserved by a live attempt: polls for up to [`PENDING_WAIT`] for the receipt, then answers
//!   `unavailable` (503) so the wallet retries; its retry gets the receipt;
//! - reserved by an attempt whose lease is older than [`RESERVATION_LEASE_SECONDS`] (its
//!   process died, or the database failed between charge and issue): takes the reservation
//!   over (compare-and-swap on the lease token, so only one retry does), charges again, which
//!   the idempotency key turns into a no-op if the first attempt had charged, and issues.
//!
//! # Receipt lookup and renewal
//!
//! Knowing the digest (256 bits only the wallet has) is the capability to read its receipt,
//! and the answer says nothing else (a payment still in progress is `not_found` too). A stored
//! receipt that has expired is renewed in place by lookups and by checkout retries: same id,
//! keyset, count, digest, amount, currency and `issued_at`, a fresh `expires_at` and signature.
//! Nodes key their log by receipt id and digest, so a renewed receipt is the same receipt to
//! them.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{self, State};
use prometheus_client::metrics::counter::Counter;
use ticketing_config::cluster::{
    PAYMENTS_BUNDLE, ServiceBundle, manifest_path, read_manifest, read_secret_json,
};
use ticketing_config::{HttpSettings, PaymentsSettings, Settings};
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::audit::ReceiptTotals;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::manifest::{Manifest, Product};
use ticketing_protocol::receipt::{CheckoutRequest, PaymentMethod, Receipt, SignedReceipt};
use ticketing_protocol::voucher::VoucherCode;
use ticketing_protocol::{Digest32, ErrorCode, Id16};
use ticketing_service::{Api, ApiError, Json, Metrics, Route};
use zeroize::Zeroizing;

use crate::PaymentsError;
use crate::card::{CardNumber, Processor, StubProcessor};
use crate::store::{
    CheckoutOutcome, PaymentsStore, PendingReceipt, Reservation, Stored, VoucherPayment, open_store,
};

/// A card payment's reservation older than this (seconds) is presumed abandoned (its process
/// died or lost the database between charging and issuing) and a retry may take it over.
/// Longer than any processor call takes.
pub const RESERVATION_LEASE_SECONDS: u64 = 60;

/// How long a checkout waits for another attempt's payment of the same digest to finish
/// before answering `unavailable`.
pub const PENDING_WAIT: Duration = Duration::from_secs(2);

const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(200);

/// The payments service's state: manifest, receipt key, store and settings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    manifest: Manifest,
    key: SignKey,
    store: Arc<dyn PaymentsStore>,
    processor: Arc<dyn Processor>,
    settings: PaymentsSettings,
    http: HttpSettings,
    metrics: Metrics,
    issued: Counter,
    replayed: Counter,
    renewed: Counter,
    card_declines: Counter,
    voucher_refusals: Counter,
    limiter: ticketing_service::limit::Limiter,
}

impl Payments {
    /// Build the state with the test-mode [`StubProcessor`]. Refuses a receipt key that is
    /// not the manifest's payments key (nodes would reject every receipt).
    pub fn new(
        manifest: Manifest,
        key: SignKey,
        store: Arc<dyn PaymentsStore>,
        settings: &Settings,
    ) -> Result<Self, PaymentsError> {
        let processor = Arc::new(StubProcessor::new());
        Self::with_processor(manifest, key, store, processor, settings)
    }

    /// [`Payments::new`] with another card processor.
    pub fn with_processor(
        manifest: Manifest,
        key: SignKey,
        store: Arc<dyn PaymentsStore>,
        processor: Arc<dyn Processor>,
        settings: &Settings,
    ) -> Result<Self, PaymentsError> {
        if key.verify_key() != manifest.payments.key {
            return Err(PaymentsError::KeyMismatch);
        }
        let metrics = Metrics::new("ticketing_payments");
        let issued = metrics.counter("receipts_issued", "Receipts signed and stored");
        let replayed = metrics.counter(
            "receipts_replayed",
            "Checkouts answered with the receipt already stored for their digest",
        );
        let renewed = metrics.counter(
            "receipts_renewed",
            "Expired receipts re-signed with a fresh expiry (lookups and checkout retries)",
        );
        let card_declines = metrics.counter("card_declines", "Checkouts with a declined card");
        let voucher_refusals = metrics.counter(
            "voucher_refusals",
            "Checkouts with a mistyped, unknown, wrong-product or used voucher",
        );
        Ok(Self {
            inner: Arc::new(Inner {
                manifest,
                key,
                store,
                processor,
                settings: settings.payments.clone(),
                http: settings.http.clone(),
                metrics,
                issued,
                replayed,
                renewed,
                card_declines,
                voucher_refusals,
                limiter: ticketing_service::limit::Limiter::default(),
            }),
        })
    }

    /// Load what `ticketing payments` needs from `settings`: the manifest and receipt key from
    /// the cluster directory (`data_dir`, as `ticketing setup` wrote it) and the store from
    /// [`Settings::payments_database_url`].
    pub async fn load(settings: &Settings) -> Result<Self, PaymentsError> {
        let dir: &Path = &settings.data_dir;
        let manifest = read_manifest(&manifest_path(dir))?;
        let bundle: ServiceBundle =
            read_secret_json(&settings.secrets_in(dir).join(PAYMENTS_BUNDLE))?;
        let key = bundle.sign_key()?;
        let store = open_store(&settings.payments_database_url()).await?;
        Self::new(manifest, key, store, settings)
    }

    /// Receipt totals per keyset, signed with the receipt key.
    pub async fn totals(&self, now: u64) -> Result<ReceiptTotals, PaymentsError> {
        let keysets = self.inner.store.totals().await?;
        Ok(ReceiptTotals::sign(now, keysets, &self.inner.key))
    }

    /// The manifest the service checks requests against.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn PaymentsStore> {
        &self.inner.store
    }

    /// The card processor.
    pub fn processor(&self) -> &Arc<dyn Processor> {
        &self.inner.processor
    }

    /// The metrics registry (served at `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Check the request, take the payment and return the signed receipt; a request for a
    /// digest that already has a receipt gets that receipt back (renewed if it has expired)
    /// without paying again, and one for a digest another request is paying for waits for
    /// that payment ([`PaymentsError::PaymentInProgress`] if it takes too long). Counts and
    /// logs the outcome (product, count and outcome only).
    pub async fn checkout(&self, request: CheckoutRequest) -> Result<SignedReceipt, PaymentsError> {
        let count = request.count;
        // Only a product name from the manifest may reach the logs, never arbitrary input.
        let product = self
            .inner
            .manifest
            .product(&request.product)
            .map(|p| p.name.clone());
        let result = self.checkout_inner(request).await;
        let product = product.as_deref().unwrap_or("-");
        match &result {
            Ok((_, replayed)) => {
                let outcome = if *replayed { "replayed" } else { "issued" };
                if *replayed {
                    self.inner.replayed.inc();
                } else {
                    self.inner.issued.inc();
                }
                tracing::info!(product, count, outcome, "checkout");
            }
            Err(e) => {
                match e {
                    PaymentsError::Declined(_) => {
                        self.inner.card_declines.inc();
                    }
                    PaymentsError::VoucherTypo(_)
                    | PaymentsError::UnknownVoucher
                    | PaymentsError::VoucherWrongProduct(_)
                    | PaymentsError::VoucherUsed => {
                        self.inner.voucher_refusals.inc();
                    }
                    _ => {}
                }
                let outcome = e.code().as_str();
                if e.is_internal() {
                    // Error texts never contain card numbers, codes or digests.
                    tracing::error!(product, count, outcome, error = %e, "checkout failed");
                } else {
                    tracing::info!(product, count, outcome, "checkout refused");
                }
            }
        }
        result.map(|(receipt, _)| receipt)
    }

    /// The receipt stored for `digest`, renewed (re-signed with a fresh expiry, stored) if it
    /// has expired; [`PaymentsError::NoReceipt`] if there is none (or its card payment has not
    /// finished). Logs the outcome only.
    pub async fn receipt(&self, digest: &Digest32) -> Result<SignedReceipt, PaymentsError> {
        // Only the wallet knows the digest, so telling it "in progress" (503, retry) rather
        // than "no receipt" reveals nothing to anyone else, and keeps a wallet from concluding
        // that a payment still being processed never happened.
        let result = match self.inner.store.stored(digest).await {
            Ok(Some(crate::store::Stored::Issued(stored))) => self.fresh(stored).await,
            Ok(Some(crate::store::Stored::Paying { .. })) => Err(PaymentsError::PaymentInProgress),
            Ok(None) => Err(PaymentsError::NoReceipt),
            Err(e) => Err(e),
        };
        match &result {
            Ok((_, renewed)) => {
                let outcome = if *renewed { "renewed" } else { "found" };
                tracing::info!(outcome, "receipt lookup");
            }
            Err(e) if e.is_internal() => {
                tracing::error!(outcome = e.code().as_str(), error = %e, "receipt lookup failed");
            }
            Err(e) => tracing::info!(outcome = e.code().as_str(), "receipt lookup"),
        }
        result.map(|(receipt, _)| receipt)
    }

    /// The checkout; the flag says whether the receipt was already stored.
    async fn checkout_inner(
        &self,
        request: CheckoutRequest,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        let CheckoutRequest {
            product,
            keyset_id,
            count,
            digest,
            payment,
        } = request;
        let inner = &self.inner;
        let product =
            inner
                .manifest
                .product(&product)
                .ok_or_else(|| PaymentsError::UnknownProduct {
                    known: inner.manifest.product_names(),
                })?;
        let keyset = inner
            .manifest
            .keyset(&keyset_id)
            .ok_or(PaymentsError::UnknownKeyset(keyset_id))?;
        if keyset.params.product != product.name {
            return Err(PaymentsError::KeysetWrongProduct {
                keyset: keyset_id,
                keyset_product: keyset.params.product.clone(),
                requested: product.name.clone(),
            });
        }
        let now = ticketing_service::now();
        // The window on sale (`Manifest::on_sale`): not one that has ended or has less than
        // the product's minimum left (the next one is on sale then).
        if !inner.manifest.sellable(keyset, now) {
            return Err(PaymentsError::KeysetEnded(keyset_id));
        }
        let max = inner.settings.max_tickets_per_checkout;
        if count == 0 || count > max {
            return Err(PaymentsError::Malformed(format!(
                "count must be between 1 and {max}, got {count}"
            )));
        }
        let terms = Terms {
            product: product.clone(),
            keyset_id,
            count,
            digest,
            sold_at: now,
        };
        match payment {
            PaymentMethod::Card { number } => self.pay_by_card(terms, number).await,
            PaymentMethod::Voucher { code } => {
                let code = Zeroizing::new(code);
                self.pay_by_voucher(&terms, &code).await
            }
        }
    }

    async fn pay_by_card(
        &self,
        terms: Terms,
        number: String,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        let card = CardNumber::from_typed(number)?;
        let amount = terms
            .product
            .price
            .checked_mul(u64::from(terms.count))
            .ok_or_else(|| PaymentsError::Malformed("the amount overflows".to_owned()))?;
        // Reserve, charge and issue in a task of its own: a wallet hanging up drops this
        // handler, which must not stop the sequence between charging and issuing.
        let this = self.clone();
        tokio::spawn(async move { this.card_checkout(&terms, &card, amount).await })
            .await
            .map_err(|e| PaymentsError::TaskFailed(e.to_string()))?
    }

    /// Card attempts until one ends with a receipt or an error, waiting while another request
    /// is paying for the same digest.
    async fn card_checkout(
        &self,
        terms: &Terms,
        card: &CardNumber,
        amount: u64,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        let mut wait = Wait::new();
        loop {
            if let Some(done) = self.card_attempt(terms, card, amount).await? {
                return Ok(done);
            }
            wait.next().await?;
        }
    }

    /// One attempt: reserve (or take over an abandoned reservation), charge, issue. `None`:
    /// another attempt holds the reservation; ask again later.
    async fn card_attempt(
        &self,
        terms: &Terms,
        card: &CardNumber,
        amount: u64,
    ) -> Result<Option<(SignedReceipt, bool)>, PaymentsError> {
        let store = &self.inner.store;
        let now = ticketing_service::now();
        let lease = Id16::random(&mut rand::rng());
        let pending = PendingReceipt {
            receipt_id: Id16::random(&mut rand::rng()),
            keyset_id: terms.keyset_id,
            count: terms.count,
            digest: terms.digest,
            amount,
            currency: terms.product.currency.clone(),
        };
        let pending = match store.reserve(&pending, lease, now).await? {
            Reservation::Reserved => pending,
            Reservation::Existing(Stored::Issued(existing)) => {
                // Paid for already: never charge again.
                return self.replay(terms, existing).await.map(Some);
            }
            Reservation::Existing(Stored::Paying {
                pending,
                lease: held,
                reserved_at,
            }) => {
                terms.check(pending.keyset_id, pending.count)?;
                if now < reserved_at.saturating_add(RESERVATION_LEASE_SECONDS) {
                    return Ok(None);
                }
                if !store.take_over(&terms.digest, held, lease, now).await? {
                    return Ok(None);
                }
                tracing::warn!(
                    product = terms.product.name.as_str(),
                    count = terms.count,
                    "took over an abandoned card payment"
                );
                // Its terms, amount included: the processor may already have charged them.
                pending
            }
        };
        let charged = self
            .inner
            .processor
            .charge(card, pending.amount, &pending.currency, &pending.digest)
            .await;
        if let Err(decline) = charged {
            // Nothing was charged: free the digest so the wallet can pay with another card.
            // If that fails, the reservation lapses after its lease.
            if let Err(e) = store.release(&pending.digest, lease).await {
                tracing::error!(error = %e, "releasing a declined payment's reservation failed");
            }
            return Err(decline.into());
        }
        let now = ticketing_service::now();
        let expires_at = now.saturating_add(self.inner.settings.receipt_ttl_seconds);
        let receipt = pending
            .into_receipt(terms.sold_at, expires_at)
            .sign(&self.inner.key);
        match store.issue(&receipt).await? {
            CheckoutOutcome::Issued(r) => Ok(Some((r, false))),
            // A concurrent taker-over issued it first (the charge was one charge).
            CheckoutOutcome::Existing(r) => self.replay(terms, r).await.map(Some),
            CheckoutOutcome::Pending => Err(PaymentsError::ReservationLost),
        }
    }

    async fn pay_by_voucher(
        &self,
        terms: &Terms,
        code: &str,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        if terms.count != 1 {
            return Err(PaymentsError::Malformed(format!(
                "a voucher pays for exactly one ticket: send count 1 (got {})",
                terms.count
            )));
        }
        let code = VoucherCode::parse(code)?;
        let voucher = VoucherPayment {
            hash: code.hash(),
            product: terms.product.name.clone(),
        };
        drop(code);
        let mut wait = Wait::new();
        loop {
            // The voucher was bought for the product's price; the receipt records that amount.
            let receipt = self.sign(terms, terms.product.price, ticketing_service::now());
            match self.inner.store.checkout(&receipt, Some(&voucher)).await? {
                CheckoutOutcome::Issued(r) => return Ok((r, false)),
                CheckoutOutcome::Existing(r) => return self.replay(terms, r).await,
                // A card payment holds these points: wait for its receipt.
                CheckoutOutcome::Pending => wait.next().await?,
            }
        }
    }

    fn sign(&self, terms: &Terms, amount: u64, now: u64) -> SignedReceipt {
        Receipt {
            receipt_id: Id16::random(&mut rand::rng()),
            keyset_id: terms.keyset_id,
            count: terms.count,
            digest: terms.digest,
            amount,
            currency: terms.product.currency.clone(),
            issued_at: terms.sold_at,
            expires_at: now.saturating_add(self.inner.settings.receipt_ttl_seconds),
        }
        .sign(&self.inner.key)
    }

    /// A stored receipt answers a retry only if it is for the same keyset and count; it is
    /// renewed if it has expired.
    async fn replay(
        &self,
        terms: &Terms,
        existing: SignedReceipt,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        terms.check(existing.receipt.keyset_id, existing.receipt.count)?;
        let (receipt, _) = self.fresh(existing).await?;
        Ok((receipt, true))
    }

    /// `stored` if it has not expired; else the same receipt re-signed with a fresh expiry
    /// (`now + receipt_ttl_seconds`), stored in its place (or the renewal a concurrent request
    /// stored first). The flag says whether it was renewed.
    async fn fresh(&self, stored: SignedReceipt) -> Result<(SignedReceipt, bool), PaymentsError> {
        let now = ticketing_service::now();
        if now < stored.receipt.expires_at {
            return Ok((stored, false));
        }
        let previous = stored.receipt.expires_at;
        let body = Receipt {
            expires_at: now.saturating_add(self.inner.settings.receipt_ttl_seconds),
            ..stored.receipt
        };
        let renewed = body.sign(&self.inner.key);
        let receipt = self.inner.store.renew(&renewed, previous).await?;
        self.inner.renewed.inc();
        Ok((receipt, true))
    }
}

/// What a checkout asks for, checked against the manifest.
struct Terms {
    product: Product,
    keyset_id: KeysetId,
    count: u32,
    digest: Digest32,
    /// When the sale was checked (`Manifest::sellable`): the receipt's `issued_at`, which
    /// nodes judge the sale by, so a slow charge cannot push it past a window's end.
    sold_at: u64,
}

impl Terms {
    /// Stored terms for the same digest must be these: the same points cannot be paid for
    /// under another keyset or count.
    fn check(&self, keyset_id: KeysetId, count: u32) -> Result<(), PaymentsError> {
        if keyset_id == self.keyset_id && count == self.count {
            Ok(())
        } else {
            Err(PaymentsError::DigestConflict)
        }
    }
}

/// Polling for another attempt's payment, with backoff, until [`PENDING_WAIT`] has passed.
struct Wait {
    deadline: Instant,
    delay: Duration,
}

impl Wait {
    fn new() -> Self {
        Self {
            deadline: Instant::now() + PENDING_WAIT,
            delay: FIRST_POLL,
        }
    }

    /// Sleep before the next look; [`PaymentsError::PaymentInProgress`] once the wait is over.
    async fn next(&mut self) -> Result<(), PaymentsError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PaymentsError::PaymentInProgress);
        }
        tokio::time::sleep(self.delay.min(left)).await;
        self.delay = (self.delay * 2).min(MAX_POLL);
        Ok(())
    }
}

/// Per client: checkouts per minute, and refused voucher codes per hour (guessing codes is
/// slowed to a crawl; a client over it gets 429 for its checkouts until the hour refills).
async fn checkout_limits(
    State(payments): State<Payments>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use ticketing_service::limit::Rate;
    let inner = &payments.inner;
    let failures = Rate::per_hour(inner.settings.voucher_failures_per_hour);
    let checkouts = Rate::per_minute(inner.settings.checkouts_per_minute);
    let ip = ticketing_service::client_ip(&req, inner.http.trust_forwarded_for);
    if let Some(ip) = ip {
        if let Err(wait) = inner.limiter.check("voucher_failures", failures, ip) {
            return ticketing_service::rate_limited(wait);
        }
        if let Err(wait) = inner.limiter.take("checkouts", checkouts, ip) {
            return ticketing_service::rate_limited(wait);
        }
    }
    let response = next.run(req).await;
    if let Some(ip) = ip
        && matches!(
            response.extensions().get::<ErrorCode>(),
            Some(ErrorCode::InvalidVoucher | ErrorCode::VoucherUsed)
        )
    {
        let _ = inner.limiter.take("voucher_failures", failures, ip);
    }
    response
}

async fn checkout(
    State(payments): State<Payments>,
    Json(request): Json<CheckoutRequest>,
) -> Result<Json<SignedReceipt>, ApiError> {
    Ok(Json(payments.checkout(request).await?))
}

async fn receipt(
    State(payments): State<Payments>,
    digest: Result<extract::Path<String>, PathRejection>,
) -> Result<Json<SignedReceipt>, ApiError> {
    // The detail never echoes the input.
    let digest = digest
        .ok()
        .and_then(|extract::Path(hex)| Digest32::from_hex(&hex).ok())
        .ok_or_else(|| {
            PaymentsError::Malformed("the digest is 64 hexadecimal characters".to_owned())
        })?;
    Ok(Json(payments.receipt(&digest).await?))
}

/// Receipt totals are public like the nodes' logs, which already carry every receipt: they
/// are counts and sums per keyset, nothing about a payer.
async fn totals(State(payments): State<Payments>) -> Result<Json<ReceiptTotals>, ApiError> {
    Ok(Json(payments.totals(ticketing_service::now()).await?))
}

/// The service's routes (`POST /v1/checkout`, `GET /v1/receipts/{digest}`,
/// `GET /v1/audit/totals`) with the shared plumbing (`/health`, `/metrics`, body limit, CORS,
/// JSON 404).
pub fn router(state: Payments) -> Router {
    let http = state.inner.http.clone();
    let metrics = state.inner.metrics.clone();
    let store = state.inner.store.clone();
    let health: ticketing_service::HealthCheck = std::sync::Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
    });
    let routes = Api::new("ticketing payments")
        .route(
            "/v1/checkout",
            Route::post(
                "Pay (test card or voucher) for blinded points: a signed receipt",
                checkout,
            )
            .map(|r| {
                r.layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    checkout_limits,
                ))
            }),
        )
        .route(
            "/v1/receipts/{digest}",
            Route::get(
                "The receipt for a digest of blinded points, if one was paid",
                receipt,
            ),
        )
        .route(
            "/v1/audit/totals",
            Route::get("Receipt counts and sums per keyset (public)", totals),
        )
        .with_state(state);
    ticketing_service::finish(routes, &http, metrics, health)
}

/// Serve the payments service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Payments,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    ticketing_service::serve(listener, router(state), shutdown).await
}
