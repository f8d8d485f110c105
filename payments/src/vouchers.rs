//! `ticketing voucher create --product P --count K`: make K fresh codes for product P, store
//! their hashes, hand the codes back. The caller prints them; that is the only place a code
//! ever appears (the store keeps hashes only). `voucher list` and `voucher void` name a voucher
//! by the start of its hash (or by its code, if at hand): a lost batch can be voided.

use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest};
use ticketing_protocol::Digest32;
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::voucher::VoucherCode;

use crate::PaymentsError;
use crate::store::{NewVoucher, PaymentsStore, VoucherRow, open_store};

/// Largest batch one call creates.
pub const MAX_VOUCHERS_PER_BATCH: u32 = 10_000;

/// `count` fresh codes for `product` (checked against the manifest), not yet stored.
pub fn generate_vouchers(
    manifest: &Manifest,
    product: &str,
    count: u32,
    rng: &mut impl rand::CryptoRng,
) -> Result<Vec<VoucherCode>, PaymentsError> {
    if manifest.product(product).is_none() {
        return Err(PaymentsError::UnknownProduct {
            known: manifest.product_names(),
        });
    }
    if count == 0 || count > MAX_VOUCHERS_PER_BATCH {
        return Err(PaymentsError::Malformed(format!(
            "the voucher count must be between 1 and {MAX_VOUCHERS_PER_BATCH}, got {count}"
        )));
    }
    Ok((0..count).map(|_| VoucherCode::generate(rng)).collect())
}

/// Create `count` vouchers for `product` with the OS random generator, store their hashes
/// (all or none) and return the codes.
pub async fn create_vouchers(
    store: &dyn PaymentsStore,
    manifest: &Manifest,
    product: &str,
    count: u32,
) -> Result<Vec<VoucherCode>, PaymentsError> {
    let codes = generate_vouchers(manifest, product, count, &mut rand::rng())?;
    let rows: Vec<NewVoucher> = codes
        .iter()
        .map(|c| NewVoucher {
            hash: c.hash(),
            product: product.to_owned(),
            created_at: ticketing_service::now(),
        })
        .collect();
    store.add_vouchers(&rows).await?;
    tracing::info!(product, count, "vouchers created");
    Ok(codes)
}

/// [`create_vouchers`] with the manifest from `data_dir` and the payments database from
/// `settings`: the whole of `ticketing voucher create`, minus printing.
pub async fn create_vouchers_with(
    settings: &Settings,
    product: &str,
    count: u32,
) -> Result<Vec<VoucherCode>, PaymentsError> {
    let manifest = read_manifest(&manifest_path(&settings.data_dir))?;
    let store = open_store(&settings.payments_database_url()).await?;
    create_vouchers(store.as_ref(), &manifest, product, count).await
}

/// The name `ticketing voucher list` gives a voucher: the first 12 hex digits of its hash.
pub fn voucher_id(hash: &Digest32) -> String {
    hash.to_string().chars().take(12).collect()
}

/// Every stored voucher (`ticketing voucher list`), with the payments database from `settings`.
pub async fn list_vouchers_with(settings: &Settings) -> Result<Vec<VoucherRow>, PaymentsError> {
    let store = open_store(&settings.payments_database_url()).await?;
    store.vouchers().await
}

/// What voiding one voucher did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voided {
    /// Voided now.
    Voided(String),
    /// Already used (or voided): unchanged.
    AlreadyUsed(String),
}

/// Void vouchers named by code (`XXXX-XXXX-XXXX-XXXX`) or by the id `voucher list` shows (at
/// least 8 hex digits of the hash). An unknown or ambiguous name fails before anything changes.
pub async fn void_vouchers_with(
    settings: &Settings,
    names: &[String],
    now: u64,
) -> Result<Vec<Voided>, PaymentsError> {
    let store = open_store(&settings.payments_database_url()).await?;
    let stored = store.vouchers().await?;
    let mut hashes = Vec::with_capacity(names.len());
    for name in names {
        let hash = match VoucherCode::parse(name) {
            Ok(code) => code.hash(),
            Err(_) => {
                let prefix = name.trim().to_ascii_lowercase();
                if prefix.len() < 8 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(PaymentsError::Malformed(format!(
                        "`{name}` is neither a voucher code nor a voucher id (8 or more hex \
                         digits, as `ticketing voucher list` shows)"
                    )));
                }
                let found: Vec<_> = stored
                    .iter()
                    .filter(|v| v.hash.to_string().starts_with(&prefix))
                    .collect();
                match found.as_slice() {
                    [one] => one.hash,
                    [] => return Err(PaymentsError::UnknownVoucher),
                    _ => {
                        return Err(PaymentsError::Malformed(format!(
                            "`{name}` names {} vouchers; give more digits",
                            found.len()
                        )));
                    }
                }
            }
        };
        if !stored.iter().any(|v| v.hash == hash) {
            return Err(PaymentsError::UnknownVoucher);
        }
        hashes.push(hash);
    }
    let mut out = Vec::with_capacity(hashes.len());
    for hash in hashes {
        let id = voucher_id(&hash);
        out.push(if store.void_voucher(&hash, now).await? == 1 {
            tracing::info!(voucher = %id, "voucher voided");
            Voided::Voided(id)
        } else {
            Voided::AlreadyUsed(id)
        });
    }
    Ok(out)
}
