//! Partners: transit operators sharing the cluster, each owning some products. They read the
//! events of their products (`GET /v1/partner/feed` with a `tkp_` token) and may get each one
//! POSTed to a webhook (`webhook.rs`). `ticketing partner add|list` call [`add_partner`] and
//! [`list_partners`] where the coordinator runs (its database, manifest and key).

use ticketing_config::Settings;
use ticketing_config::cluster::{self, ServiceBundle};
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::partner::{
    FEED_DEFAULT_LIMIT, FEED_MAX_LIMIT, FeedQuery, PartnerFeed, ProductTotals,
};
use ticketing_protocol::{ErrorCode, Id16};

use crate::auth::{self, Token};
use crate::store::{self, Partner, Store, Webhook};
use crate::webhook::WebhookSecret;
use crate::{Coordinator, CoordinatorError};

/// A partner just added, with what is shown once.
#[derive(Debug)]
pub struct NewPartner {
    /// The partner as stored.
    pub partner: Partner,
    /// Its feed token (`tkp_...`); only its hash is stored.
    pub token: Token,
    /// Its webhook signing secret (`whsec_...`), when it has a webhook; derived, not stored.
    pub webhook_secret: Option<WebhookSecret>,
}

fn refused(detail: String) -> CoordinatorError {
    CoordinatorError::Refused(ErrorCode::Malformed, detail)
}

/// Check a partner's name, products (against `manifest`) and webhook URL; returns the
/// products deduplicated in the order given.
pub fn check_partner(
    manifest: &Manifest,
    name: &str,
    products: &[String],
    webhook: Option<&str>,
) -> Result<Vec<String>, CoordinatorError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(refused(
            "a partner name is 1 to 64 printable characters".into(),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for p in products.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if manifest.product(p).is_none() {
            let known: Vec<&str> = manifest.products.iter().map(|p| p.name.as_str()).collect();
            return Err(refused(format!(
                "unknown product `{p}`; the manifest has: {}",
                known.join(", ")
            )));
        }
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    if out.is_empty() {
        return Err(refused("a partner owns at least one product".into()));
    }
    if let Some(url) = webhook {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| refused(format!("the webhook URL does not parse: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(refused(
                "the webhook URL must be http:// or https:// with a host".into(),
            ));
        }
    }
    Ok(out)
}

/// Add a partner to the coordinator's database (an ops command run where the coordinator
/// runs: it reads the manifest and, for a webhook, the coordinator's key from `data_dir`).
/// The token and the webhook secret are returned once.
pub async fn add_partner(
    settings: &Settings,
    name: &str,
    products: &[String],
    webhook: Option<&str>,
) -> Result<NewPartner, CoordinatorError> {
    let name = name.trim();
    let manifest = cluster::read_manifest(&cluster::manifest_path(&settings.data_dir))?;
    let products = check_partner(&manifest, name, products, webhook)?;
    // Read the key first: a partner must not be stored with a secret nobody could print.
    let key = match webhook {
        Some(_) => {
            let bundle: ServiceBundle = cluster::read_json(
                &settings
                    .secrets_in(&settings.data_dir)
                    .join(cluster::COORDINATOR_BUNDLE),
            )?;
            Some(bundle.sign_key()?)
        }
        None => None,
    };
    let store = store::open(&settings.coordinator_database_url()).await?;
    if store.partners().await?.iter().any(|p| p.name == name) {
        return Err(refused(format!("a partner named `{name}` exists already")));
    }
    let partner = Partner {
        id: Id16::random(&mut rand::rng()),
        name: name.to_owned(),
        products,
        webhook: webhook.map(|url| Webhook {
            url: url.to_owned(),
            cursor: 0,
            attempts: 0,
            next_at: 0,
            delivered: 0,
            skipped: 0,
        }),
        created_at: ticketing_service::now(),
    };
    let token = Token::partner();
    store
        .add_partner(&partner, &auth::token_hash(token.expose()))
        .await?;
    store
        .record_action(
            partner.created_at,
            crate::CLI_ACTOR,
            "partner_added",
            &format!(
                "`{}` (products: {}{})",
                partner.name,
                partner.products.join(", "),
                if partner.webhook.is_some() {
                    "; webhook"
                } else {
                    ""
                }
            ),
        )
        .await?;
    let webhook_secret = key.map(|k| WebhookSecret::derive(&k, &partner.id));
    Ok(NewPartner {
        partner,
        token,
        webhook_secret,
    })
}

/// Every partner in the coordinator's database, by name (no token, no secret).
pub async fn list_partners(settings: &Settings) -> Result<Vec<Partner>, CoordinatorError> {
    let store = store::open(&settings.coordinator_database_url()).await?;
    Ok(store.partners().await?)
}

/// One page of `partner`'s feed.
pub(crate) async fn feed(
    c: &Coordinator,
    partner: &Partner,
    query: FeedQuery,
) -> Result<PartnerFeed, CoordinatorError> {
    let after = query.after.unwrap_or(0);
    let limit = query
        .limit
        .unwrap_or(FEED_DEFAULT_LIMIT)
        .clamp(1, FEED_MAX_LIMIT);
    let store: &dyn Store = c.store().as_ref();
    let events = store.partner_events(&partner.id, after, limit).await?;
    let mut totals = store.partner_totals(&partner.id).await?;
    // Products without any event yet show up with zeros, in the manifest's currency.
    for product in &partner.products {
        if !totals.iter().any(|t| &t.product == product)
            && let Some(p) = c.manifest().product(product)
        {
            totals.push(ProductTotals {
                product: product.clone(),
                currency: p.currency.clone(),
                issued_tickets: 0,
                issued_amount: 0,
                revoked_tickets: 0,
                revoked_amount: 0,
            });
        }
    }
    totals.sort_by(|a, b| (&a.product, &a.currency).cmp(&(&b.product, &b.currency)));
    Ok(PartnerFeed {
        partner: partner.name.clone(),
        next_after: events.last().map_or(after, |e| e.id),
        events,
        totals,
    })
}
