//! `ticketing voucher create --product P --count K`: make K fresh codes for product P, store
//! their hashes, hand the codes back. The caller prints them; that is the only place a code
//! ever appears (the store keeps hashes only).

use ticketing_config::Settings;
use ticketing_config::cluster::{manifest_path, read_manifest};
use ticketing_protocol::manifest::Manifest;
use ticketing_protocol::voucher::VoucherCode;

use crate::PaymentsError;
use crate::store::{NewVoucher, PaymentsStore, open_store};

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
