//! The HTTP service: `POST /v1/checkout` turns a [`CheckoutRequest`] into a [`SignedReceipt`].

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use prometheus_client::metrics::counter::Counter;
use ticketing_config::cluster::{
    ServiceBundle, manifest_path, payments_bundle_path, read_json, read_manifest,
};
use ticketing_config::{HttpSettings, PaymentsSettings, Settings};
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::keys::SignKey;
use ticketing_protocol::manifest::{Manifest, Product};
use ticketing_protocol::receipt::{CheckoutRequest, PaymentMethod, Receipt, SignedReceipt};
use ticketing_protocol::voucher::VoucherCode;
use ticketing_protocol::{Digest32, Id16};
use ticketing_service::{ApiError, Json, Metrics};
use zeroize::Zeroizing;

use crate::PaymentsError;
use crate::card::{self, CardNumber};
use crate::store::{CheckoutOutcome, PaymentsStore, VoucherPayment, open_store};

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
    settings: PaymentsSettings,
    http: HttpSettings,
    metrics: Metrics,
    issued: Counter,
    replayed: Counter,
    card_declines: Counter,
    voucher_refusals: Counter,
}

impl Payments {
    /// Build the state. Refuses a receipt key that is not the manifest's payments key (nodes
    /// would reject every receipt).
    pub fn new(
        manifest: Manifest,
        key: SignKey,
        store: Arc<dyn PaymentsStore>,
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
                settings: settings.payments.clone(),
                http: settings.http.clone(),
                metrics,
                issued,
                replayed,
                card_declines,
                voucher_refusals,
            }),
        })
    }

    /// Load what `ticketing payments` needs from `settings`: the manifest and receipt key from
    /// the cluster directory (`data_dir`, as `ticketing setup` wrote it) and the store from
    /// [`Settings::payments_database_url`].
    pub async fn load(settings: &Settings) -> Result<Self, PaymentsError> {
        let dir: &Path = &settings.data_dir;
        let manifest = read_manifest(&manifest_path(dir))?;
        let bundle: ServiceBundle = read_json(&payments_bundle_path(dir))?;
        let key = bundle.sign_key()?;
        let store = open_store(&settings.payments_database_url()).await?;
        Self::new(manifest, key, store, settings)
    }

    /// The manifest the service checks requests against.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn PaymentsStore> {
        &self.inner.store
    }

    /// The metrics registry (served at `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Check the request, take the payment and return the signed receipt; a request for a
    /// digest that already has a receipt gets that receipt back without paying again.
    /// Counts and logs the outcome (product, count and outcome only).
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
        let product = inner
            .manifest
            .product(&product)
            .ok_or(PaymentsError::UnknownProduct)?;
        let keyset = inner
            .manifest
            .keyset(&keyset_id)
            .ok_or(PaymentsError::UnknownKeyset(keyset_id))?;
        if keyset.params.product != product.name {
            return Err(PaymentsError::KeysetWrongProduct {
                keyset: keyset_id,
                keyset_product: keyset.params.product.clone(),
            });
        }
        let now = ticketing_service::now();
        if now >= keyset.params.valid_until {
            return Err(PaymentsError::KeysetEnded(keyset_id));
        }
        let max = inner.settings.max_tickets_per_checkout;
        if count == 0 || count > max {
            return Err(PaymentsError::Malformed(format!(
                "count must be between 1 and {max}, got {count}"
            )));
        }
        let terms = Terms {
            product,
            keyset_id,
            count,
            digest,
        };
        match payment {
            PaymentMethod::Card { number } => self.pay_by_card(&terms, number, now).await,
            PaymentMethod::Voucher { code } => {
                let code = Zeroizing::new(code);
                self.pay_by_voucher(&terms, &code, now).await
            }
        }
    }

    async fn pay_by_card(
        &self,
        terms: &Terms<'_>,
        number: String,
        now: u64,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        let card = CardNumber::from_typed(number)?;
        let amount = terms
            .product
            .price
            .checked_mul(u64::from(terms.count))
            .ok_or_else(|| PaymentsError::Malformed("the amount overflows".to_owned()))?;
        // A retry for paid-for points must not charge the card again.
        if let Some(existing) = self.inner.store.receipt_by_digest(&terms.digest).await? {
            return terms.replay(existing);
        }
        card::charge(&card, amount, &terms.product.currency)?;
        drop(card);
        let receipt = self.sign(terms, amount, now);
        self.record(terms, &receipt, None).await
    }

    async fn pay_by_voucher(
        &self,
        terms: &Terms<'_>,
        code: &str,
        now: u64,
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
        // The voucher was bought for the product's price; the receipt records that amount.
        let receipt = self.sign(terms, terms.product.price, now);
        self.record(terms, &receipt, Some(&voucher)).await
    }

    fn sign(&self, terms: &Terms<'_>, amount: u64, now: u64) -> SignedReceipt {
        Receipt {
            receipt_id: Id16::random(&mut rand::rng()),
            keyset_id: terms.keyset_id,
            count: terms.count,
            digest: terms.digest,
            amount,
            currency: terms.product.currency.clone(),
            issued_at: now,
            expires_at: now.saturating_add(self.inner.settings.receipt_ttl_seconds),
        }
        .sign(&self.inner.key)
    }

    async fn record(
        &self,
        terms: &Terms<'_>,
        receipt: &SignedReceipt,
        voucher: Option<&VoucherPayment>,
    ) -> Result<(SignedReceipt, bool), PaymentsError> {
        match self.inner.store.checkout(receipt, voucher).await? {
            CheckoutOutcome::Issued(r) => Ok((r, false)),
            CheckoutOutcome::Existing(r) => terms.replay(r),
        }
    }
}

/// What a checkout asks for, checked against the manifest.
struct Terms<'a> {
    product: &'a Product,
    keyset_id: KeysetId,
    count: u32,
    digest: Digest32,
}

impl Terms<'_> {
    /// A stored receipt for the same digest answers a retry only if it is for the same
    /// keyset and count.
    fn replay(&self, existing: SignedReceipt) -> Result<(SignedReceipt, bool), PaymentsError> {
        if existing.receipt.keyset_id == self.keyset_id && existing.receipt.count == self.count {
            Ok((existing, true))
        } else {
            Err(PaymentsError::DigestConflict)
        }
    }
}

async fn checkout(
    State(payments): State<Payments>,
    Json(request): Json<CheckoutRequest>,
) -> Result<Json<SignedReceipt>, ApiError> {
    Ok(Json(payments.checkout(request).await?))
}

/// The service's routes (`POST /v1/checkout`) with the shared plumbing (`/health`,
/// `/metrics`, body limit, CORS, JSON 404).
pub fn router(state: Payments) -> Router {
    let http = state.inner.http.clone();
    let metrics = state.inner.metrics.clone();
    let routes = Router::new()
        .route("/v1/checkout", post(checkout))
        .with_state(state);
    ticketing_service::finish(routes, &http, metrics)
}

/// Serve the payments service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Payments,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    ticketing_service::serve(listener, router(state), shutdown).await
}
