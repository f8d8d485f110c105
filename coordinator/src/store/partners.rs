//! The partner feed: `issued` and `revoked` events (products, counts and amounts, never a
//! serial), the partners who read them, and their webhooks' delivery state.

use async_trait::async_trait;
use ticketing_crypto::keyset::KeysetId;
use ticketing_protocol::Id16;
use ticketing_protocol::partner::{EventKind, PartnerEvent, ProductTotals};
use ticketing_protocol::redeem::DenyReason;
use ticketing_service::db::{Dialect, Row, Tx, query};

use super::{Fare, SqlStore, StoreError, id16_of, keyset_of, parse_reason, reason_str, to_i64};

/// A purchase seen in at least t node logs, to record as an `issued` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    /// The receipt's id (the event is unique on it).
    pub receipt_id: Id16,
    /// Keyset paid for.
    pub keyset_id: KeysetId,
    /// The keyset's product.
    pub product: String,
    /// Tickets (the receipt's count).
    pub tickets: u32,
    /// Amount paid, minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// When the coordinator saw it reach t logs.
    pub at: u64,
}

/// A partner (a transit operator owning some products). Its token is stored only hashed; its
/// webhook secret is derived from the coordinator's key, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Random id (the webhook secret is derived from it).
    pub id: Id16,
    /// Unique name, e.g. `metro`.
    pub name: String,
    /// Manifest product names it owns.
    pub products: Vec<String>,
    /// Its webhook, if any, with the delivery state.
    pub webhook: Option<Webhook>,
    /// Unix seconds.
    pub created_at: u64,
}

/// A partner's webhook and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http(s)://...` receiving one POST per event.
    pub url: String,
    /// The last event id delivered (or skipped); the next delivery is the first event after it.
    pub cursor: u64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    /// Unix seconds when the next attempt is due (0: now).
    pub next_at: u64,
    /// Events delivered (answered 2xx).
    pub delivered: u64,
    /// Events given up after the maximum number of attempts.
    pub skipped: u64,
}

/// The feed, partners and webhooks.
#[async_trait]
pub trait Partners: Send + Sync + 'static {
    /// Record purchases as `issued` events in one transaction; a receipt already recorded is
    /// skipped. Returns how many were new.
    async fn record_issuances(&self, issuances: &[Issuance]) -> Result<u64, StoreError>;
    /// Tickets of `keyset_id` recorded as issued.
    async fn issued(&self, keyset_id: &KeysetId) -> Result<u64, StoreError>;
    /// Add a partner (by its token's hash); its name and token must be new.
    async fn add_partner(&self, partner: &Partner, token_hash: &[u8; 32])
    -> Result<(), StoreError>;
    /// The partner a token hash belongs to.
    async fn partner(&self, token_hash: &[u8; 32]) -> Result<Option<Partner>, StoreError>;
    /// Every partner, by name.
    async fn partners(&self) -> Result<Vec<Partner>, StoreError>;
    /// Events of the partner's products with `id > after`, ascending, at most `limit`.
    async fn partner_events(
        &self,
        partner: &Id16,
        after: u64,
        limit: u32,
    ) -> Result<Vec<PartnerEvent>, StoreError>;
    /// Totals over every event of the partner's products, per product and currency.
    async fn partner_totals(&self, partner: &Id16) -> Result<Vec<ProductTotals>, StoreError>;
    /// The partner's webhook is done with event `event_id` (delivered, or skipped after too
    /// many attempts): its cursor moves there (never backwards) and its attempts reset.
    async fn webhook_done(
        &self,
        partner: &Id16,
        event_id: u64,
        delivered: bool,
    ) -> Result<(), StoreError>;
    /// A delivery failed: `attempts` so far at the next event, due again at `next_at`.
    async fn webhook_failed(
        &self,
        partner: &Id16,
        attempts: u32,
        next_at: u64,
    ) -> Result<(), StoreError>;
}

/// An event row to insert.
#[derive(Debug, Clone)]
pub(super) struct NewEvent {
    kind: &'static str,
    reason: Option<&'static str>,
    at: u64,
    keyset_id: KeysetId,
    product: String,
    tickets: u32,
    amount: u64,
    currency: String,
    receipt_id: Option<Id16>,
}

impl NewEvent {
    fn issued(i: &Issuance) -> Self {
        Self {
            kind: "issued",
            reason: None,
            at: i.at,
            keyset_id: i.keyset_id,
            product: i.product.clone(),
            tickets: i.tickets,
            amount: i.amount,
            currency: i.currency.clone(),
            receipt_id: Some(i.receipt_id),
        }
    }

    /// One denied ticket, valued at the product's price. Deliberately without the serial.
    pub(super) fn revoked(keyset_id: KeysetId, reason: DenyReason, fare: &Fare, at: u64) -> Self {
        Self {
            kind: "revoked",
            reason: Some(reason_str(reason)),
            at,
            keyset_id,
            product: fare.product.clone(),
            tickets: 1,
            amount: fare.price,
            currency: fare.currency.clone(),
            receipt_id: None,
        }
    }
}

/// The statement that serializes event appends across connections (see [`insert_events`]):
/// a transaction-scoped advisory lock on Postgres (any constant key, used for nothing else);
/// none on SQLite, whose writers are one at a time already.
fn events_lock(dialect: Dialect) -> Option<&'static str> {
    dialect
        .is_postgres()
        .then_some("SELECT pg_advisory_xact_lock(7460150)")
}

/// Append events (the feed) inside `tx`; returns how many were new (a purchase already
/// recorded is skipped by `receipt_id UNIQUE`). On Postgres an advisory lock held until the
/// commit serializes event writers, so ids become visible in order: call it last before the
/// commit, so the lock is held only for that.
pub(super) async fn insert_events(
    tx: &mut Tx<'_>,
    dialect: Dialect,
    events: &[NewEvent],
) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    if let Some(lock) = events_lock(dialect) {
        query(lock).execute(&mut *tx).await?;
    }
    let mut inserted = 0;
    for e in events {
        inserted += query(
            "INSERT INTO events (kind, reason, event_time, keyset_id, product, tickets, \
             amount, currency, receipt_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (receipt_id) DO NOTHING",
        )
        .bind(e.kind)
        .bind(e.reason)
        .bind(to_i64(e.at)?)
        .bind(e.keyset_id.0.as_slice())
        .bind(&e.product)
        .bind(e.tickets)
        .bind(to_i64(e.amount)?)
        .bind(&e.currency)
        .bind(e.receipt_id.as_ref().map(|r| r.0.to_vec()))
        .execute(&mut *tx)
        .await?;
    }
    Ok(inserted)
}

/// `SELECT` of a partner row, then the rest of the query.
macro_rules! select_partner {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, webhook_url, webhook_cursor, webhook_attempts, webhook_next_at, ",
            "webhook_delivered, webhook_skipped, created_at FROM partners ",
            $rest
        )
    };
}

/// A count column that must fit a `u32`.
fn u32_of(row: &Row, column: &str) -> Result<u32, StoreError> {
    u32::try_from(row.get::<i64>(column)?)
        .map_err(|_| StoreError::Corrupt(format!("{column} out of range")))
}

/// One event row of the feed.
fn event_of(row: &Row) -> Result<PartnerEvent, StoreError> {
    let kind = match row.text("kind")? {
        "issued" => EventKind::Issued {
            receipt_id: id16_of(row.get::<Option<&[u8]>>("receipt_id")?.unwrap_or_default())?,
        },
        "revoked" => EventKind::Revoked {
            reason: parse_reason(row.get::<Option<&str>>("reason")?.unwrap_or_default())?,
        },
        other => {
            return Err(StoreError::Corrupt(format!("unknown event kind {other:?}")));
        }
    };
    Ok(PartnerEvent {
        id: row.u64("id")?,
        time: row.u64("event_time")?,
        keyset_id: keyset_of(row.bytes("keyset_id")?)?,
        product: row.get("product")?,
        tickets: u32_of(row, "tickets")?,
        amount: row.u64("amount")?,
        currency: row.get("currency")?,
        kind,
    })
}

impl SqlStore {
    async fn products_of(&self, partner: &[u8]) -> Result<Vec<String>, StoreError> {
        let rows =
            query("SELECT product FROM partner_products WHERE partner_id = $1 ORDER BY product")
                .bind(partner)
                .fetch_all(&self.db)
                .await?;
        rows.iter().map(|r| r.get::<String>("product")).collect()
    }

    /// A partner from its row (see `select_partner!`) and its products.
    async fn partner_of(&self, row: &Row) -> Result<Partner, StoreError> {
        let id = row.bytes("id")?;
        let webhook = match row.get::<Option<String>>("webhook_url")? {
            None => None,
            Some(url) => Some(Webhook {
                url,
                cursor: row.u64("webhook_cursor")?,
                attempts: u32_of(row, "webhook_attempts")?,
                next_at: row.u64("webhook_next_at")?,
                delivered: row.u64("webhook_delivered")?,
                skipped: row.u64("webhook_skipped")?,
            }),
        };
        Ok(Partner {
            id: id16_of(id)?,
            name: row.get("name")?,
            products: self.products_of(id).await?,
            webhook,
            created_at: row.u64("created_at")?,
        })
    }
}

/// Add one `(product, currency, kind)` sum to the totals (rows come ordered by product and
/// currency, the two kinds of one pair next to each other).
fn add_total(totals: &mut Vec<ProductTotals>, row: &Row) -> Result<(), StoreError> {
    let product: String = row.get("product")?;
    let currency: String = row.get("currency")?;
    let tickets = row.u64("tickets")?;
    let amount = row.u64("amount")?;
    let i = match totals
        .iter()
        .position(|t| t.product == product && t.currency == currency)
    {
        Some(i) => i,
        None => {
            totals.push(ProductTotals {
                product,
                currency,
                issued_tickets: 0,
                issued_amount: 0,
                revoked_tickets: 0,
                revoked_amount: 0,
            });
            totals.len() - 1
        }
    };
    let Some(t) = totals.get_mut(i) else {
        return Ok(());
    };
    match row.text("kind")? {
        "issued" => {
            t.issued_tickets = tickets;
            t.issued_amount = amount;
        }
        _ => {
            t.revoked_tickets = tickets;
            t.revoked_amount = amount;
        }
    }
    Ok(())
}

#[async_trait]
impl Partners for SqlStore {
    async fn record_issuances(&self, issuances: &[Issuance]) -> Result<u64, StoreError> {
        if issuances.is_empty() {
            return Ok(0);
        }
        let _guard = self.write_guard().await;
        let mut tx = self.db.begin_write().await?;
        let events: Vec<NewEvent> = issuances.iter().map(NewEvent::issued).collect();
        let inserted = insert_events(&mut tx, self.db.dialect(), &events).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn issued(&self, keyset_id: &KeysetId) -> Result<u64, StoreError> {
        query(
            "SELECT CAST(COALESCE(SUM(tickets), 0) AS BIGINT) AS issued FROM events \
             WHERE keyset_id = $1 AND kind = 'issued'",
        )
        .bind(keyset_id.0.as_slice())
        .fetch_one(&self.db)
        .await?
        .u64("issued")
    }

    async fn add_partner(
        &self,
        partner: &Partner,
        token_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.db.begin_write().await?;
        query(
            "INSERT INTO partners (id, name, token_hash, webhook_url, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(partner.id.0.as_slice())
        .bind(&partner.name)
        .bind(token_hash)
        .bind(partner.webhook.as_ref().map(|w| w.url.clone()))
        .bind(to_i64(partner.created_at)?)
        .execute(&mut tx)
        .await?;
        for product in &partner.products {
            query(
                "INSERT INTO partner_products (partner_id, product) VALUES ($1, $2) \
                 ON CONFLICT (partner_id, product) DO NOTHING",
            )
            .bind(partner.id.0.as_slice())
            .bind(product)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn partner(&self, token_hash: &[u8; 32]) -> Result<Option<Partner>, StoreError> {
        let row = query(select_partner!("WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.db)
            .await?;
        match row {
            Some(row) => Ok(Some(self.partner_of(&row).await?)),
            None => Ok(None),
        }
    }

    async fn partners(&self) -> Result<Vec<Partner>, StoreError> {
        let rows = query(select_partner!("ORDER BY name"))
            .fetch_all(&self.db)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.partner_of(row).await?);
        }
        Ok(out)
    }

    async fn partner_events(
        &self,
        partner: &Id16,
        after: u64,
        limit: u32,
    ) -> Result<Vec<PartnerEvent>, StoreError> {
        let rows = query(
            "SELECT e.id, e.kind, e.reason, e.event_time, e.keyset_id, e.product, e.tickets, \
             e.amount, e.currency, e.receipt_id FROM events e \
             JOIN partner_products p ON p.product = e.product \
             WHERE p.partner_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
        )
        .bind(partner.0.as_slice())
        .bind(to_i64(after)?)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(event_of).collect()
    }

    async fn partner_totals(&self, partner: &Id16) -> Result<Vec<ProductTotals>, StoreError> {
        let rows = query(
            "SELECT e.product, e.currency, e.kind, \
             CAST(SUM(e.tickets) AS BIGINT) AS tickets, CAST(SUM(e.amount) AS BIGINT) AS amount \
             FROM events e JOIN partner_products p ON p.product = e.product \
             WHERE p.partner_id = $1 GROUP BY e.product, e.currency, e.kind \
             ORDER BY e.product, e.currency",
        )
        .bind(partner.0.as_slice())
        .fetch_all(&self.db)
        .await?;
        let mut totals = Vec::new();
        for row in &rows {
            add_total(&mut totals, row)?;
        }
        Ok(totals)
    }

    async fn webhook_done(
        &self,
        partner: &Id16,
        event_id: u64,
        delivered: bool,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        let sql = if delivered {
            "UPDATE partners SET webhook_cursor = $2, webhook_attempts = 0, webhook_next_at = 0, \
             webhook_delivered = webhook_delivered + 1 WHERE id = $1 AND webhook_cursor < $2"
        } else {
            "UPDATE partners SET webhook_cursor = $2, webhook_attempts = 0, webhook_next_at = 0, \
             webhook_skipped = webhook_skipped + 1 WHERE id = $1 AND webhook_cursor < $2"
        };
        query(sql)
            .bind(partner.0.as_slice())
            .bind(to_i64(event_id)?)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn webhook_failed(
        &self,
        partner: &Id16,
        attempts: u32,
        next_at: u64,
    ) -> Result<(), StoreError> {
        let _guard = self.write_guard().await;
        query("UPDATE partners SET webhook_attempts = $2, webhook_next_at = $3 WHERE id = $1")
            .bind(partner.0.as_slice())
            .bind(attempts)
            .bind(to_i64(next_at)?)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}
