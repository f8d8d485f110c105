//! Cash vouchers: the hash of each code and the product it pays for. A voucher is used once:
//! a checkout burns it ([`Receipts::checkout`](super::Receipts::checkout), in the same
//! transaction as the receipt) or an operator voids it.

use async_trait::async_trait;
use ticketing_protocol::Digest32;
use ticketing_service::db::{Executor, Tx, query, to_u64};

use super::{SqlStore, array};
use crate::PaymentsError;

/// A voucher to store: the hash of its code and the product it pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVoucher {
    /// [`ticketing_protocol::voucher::VoucherCode::hash`].
    pub hash: Digest32,
    /// Product name (checked against the manifest by the caller).
    pub product: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A voucher that pays for a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherPayment {
    /// Hash of the code.
    pub hash: Digest32,
    /// The product being bought; the voucher must be for it.
    pub product: String,
}

/// A stored voucher's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherInfo {
    /// The product it pays for.
    pub product: String,
    /// Whether it was used (or voided).
    pub used: bool,
    /// Whether an operator voided it.
    pub voided: bool,
}

/// A stored voucher as `ticketing voucher list` shows it (the code itself is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherRow {
    /// Its hash (the first hex digits name it for `voucher void`).
    pub hash: Digest32,
    /// The product it pays for.
    pub product: String,
    /// Unix seconds (0 for vouchers made before it was kept).
    pub created_at: u64,
    /// Used for a purchase.
    pub used: bool,
    /// Unix seconds, if voided.
    pub voided_at: Option<u64>,
}

/// The vouchers an operator made.
#[async_trait]
pub trait Vouchers: Send + Sync {
    /// Store new vouchers, all or none. A hash that already exists fails the whole batch with
    /// [`PaymentsError::DuplicateVoucher`].
    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError>;

    /// Every stored voucher, oldest first.
    async fn vouchers(&self) -> Result<Vec<VoucherRow>, PaymentsError>;

    /// Void the unused vouchers whose hash is `hash` (used ones stay as they are); returns
    /// how many were voided.
    async fn void_voucher(&self, hash: &Digest32, now: u64) -> Result<u64, PaymentsError>;

    /// A stored voucher's product and state.
    async fn voucher(&self, hash: &Digest32) -> Result<Option<VoucherInfo>, PaymentsError>;
}

#[async_trait]
impl Vouchers for SqlStore {
    async fn add_vouchers(&self, vouchers: &[NewVoucher]) -> Result<(), PaymentsError> {
        let mut tx = self.db.begin_write().await?;
        for v in vouchers {
            let added = query(
                "INSERT INTO vouchers (hash, product, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(v.hash.0.as_slice())
            .bind(&v.product)
            .bind(i64::try_from(v.created_at).unwrap_or(i64::MAX))
            .execute(&mut tx)
            .await?;
            if added == 0 {
                // Dropping the transaction rolls back the vouchers added before this one.
                return Err(PaymentsError::DuplicateVoucher);
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn vouchers(&self) -> Result<Vec<VoucherRow>, PaymentsError> {
        let rows = query(
            "SELECT hash, product, created_at, used, voided_at FROM vouchers \
             ORDER BY created_at, hash",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(|row| voucher_row(row.decode()?)).collect()
    }

    async fn void_voucher(&self, hash: &Digest32, now: u64) -> Result<u64, PaymentsError> {
        Ok(
            query("UPDATE vouchers SET used = TRUE, voided_at = $1 WHERE hash = $2 AND NOT used")
                .bind(i64::try_from(now).unwrap_or(i64::MAX))
                .bind(hash.0.as_slice())
                .execute(&self.db)
                .await?,
        )
    }

    async fn voucher(&self, hash: &Digest32) -> Result<Option<VoucherInfo>, PaymentsError> {
        voucher_in(&self.db, hash).await
    }
}

/// Burn the voucher that pays for a checkout, inside the checkout's transaction: nothing
/// changes unless it exists, is for the product bought and is unused (the refusal says which).
pub(super) async fn burn(tx: &mut Tx<'_>, voucher: &VoucherPayment) -> Result<(), PaymentsError> {
    let burned =
        query("UPDATE vouchers SET used = TRUE WHERE hash = $1 AND product = $2 AND NOT used")
            .bind(voucher.hash.0.as_slice())
            .bind(&voucher.product)
            .execute(&mut *tx)
            .await?;
    if burned == 1 {
        return Ok(());
    }
    let found = voucher_in(&mut *tx, &voucher.hash).await?;
    Err(voucher_refusal(found, &voucher.product))
}

/// A voucher's product and state, read on `on` (the pool or a transaction).
async fn voucher_in<'e>(
    on: impl Executor<'e>,
    hash: &Digest32,
) -> Result<Option<VoucherInfo>, PaymentsError> {
    let row = query("SELECT product, used, voided_at FROM vouchers WHERE hash = $1")
        .bind(hash.0.as_slice())
        .fetch_optional(on)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (product, used, voided): (String, bool, Option<i64>) = row.decode()?;
    Ok(Some(VoucherInfo {
        product,
        used,
        voided: voided.is_some(),
    }))
}

fn voucher_row(
    row: (Vec<u8>, String, i64, bool, Option<i64>),
) -> Result<VoucherRow, PaymentsError> {
    let (hash, product, created_at, used, voided_at) = row;
    Ok(VoucherRow {
        hash: Digest32(array(&hash, "voucher hash")?),
        product,
        created_at: to_u64(created_at)?,
        used,
        voided_at: voided_at.map(to_u64).transpose()?,
    })
}

/// Why a voucher UPDATE flipped nothing, from the row it read back (`None`: no such voucher).
fn voucher_refusal(found: Option<VoucherInfo>, product: &str) -> PaymentsError {
    match found {
        None => PaymentsError::UnknownVoucher,
        Some(v) if v.product != product => PaymentsError::VoucherWrongProduct(v.product),
        Some(v) if v.voided => PaymentsError::VoucherVoided,
        Some(_) => PaymentsError::VoucherUsed,
    }
}
