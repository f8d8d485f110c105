//! Self-test of the crypto inside wasm32: the whole ticket flow run from one seed.
//!
//! [`flow_report`] deals a t-of-n keyset, blinds a ticket message, collects every node's
//! partial, combines, unblinds, verifies, and presents the ticket, all with a ChaCha20 RNG
//! seeded from `seed`. It returns every public value (hex) and one boolean per check.
//!
//! [`run_flow`] is the same function exported to JavaScript. Natively the crypto runs on C blst
//! (through `blstrs`), in wasm32 on pure Rust (`blstrs_plus`), so a native report equal to the
//! one Node prints is a cross-backend check, not a tautology (`tests/tests/wasm_flow.rs`).

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use serde_json::{Value, json};
use ticketing_crypto::backend::{Active, Backend};
use ticketing_crypto::issuance::{self, PartialSignature};
use ticketing_crypto::keyset::{self, KeysetId, KeysetParams};
use ticketing_crypto::presentation::Presentation;
use ticketing_crypto::ticket::{HolderSecret, Ticket};
use wasm_bindgen::prelude::{JsError, wasm_bindgen};

/// Epoch the presentation is signed for and checked at.
pub const EPOCH: u32 = 1000;

/// Run the flow in JavaScript: the JSON text of [`flow_report`], or a thrown `Error`.
#[wasm_bindgen]
pub fn run_flow(seed: u64, threshold: u32, nodes: u32) -> Result<String, JsError> {
    let report = flow_report(seed, threshold, nodes).map_err(|e| JsError::new(&e))?;
    Ok(report.to_string())
}

/// The curve backend this build uses: the report's `backend` field, the one value that differs
/// between a native and a wasm32 run.
pub fn backend_name() -> &'static str {
    <Active as Backend>::NAME
}

/// Run the whole flow from `seed` with a `threshold`-of-`nodes` keyset.
///
/// `Err` only when the flow cannot run at all (bad parameters, a step refusing valid input);
/// a check that merely comes out wrong is reported as `false` in `checks`.
pub fn flow_report(seed: u64, threshold: u32, nodes: u32) -> Result<Value, String> {
    let t = usize::try_from(threshold).map_err(|e| format!("threshold: {e}"))?;
    let n = usize::try_from(nodes).map_err(|e| format!("nodes: {e}"))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    // Dealer.
    let dealt = keyset::deal(t, n, &mut rng).map_err(|e| format!("deal {t}-of-{n}: {e}"))?;
    let public_key = dealt
        .public_key()
        .map_err(|e| format!("keyset public key: {e}"))?;
    let params = KeysetParams {
        product: "day".to_owned(),
        valid_from: 0,
        valid_until: 86_400,
    };
    let keyset_id = KeysetId::derive(&public_key, &params);

    // Wallet: holder key, blind.
    let holder_secret = HolderSecret::generate(&mut rng);
    let holder = holder_secret.public_key();
    let (blinded, blinding) = issuance::blind(&keyset_id, &holder, &mut rng);

    // Every node signs; each partial is checked against the node's key from the commitments.
    let partials: Vec<PartialSignature> = dealt
        .shares
        .iter()
        .map(|share| issuance::partial_sign(share, &blinded))
        .collect();
    let partials_verify = partials.iter().all(|p| {
        let pk_i = dealt.commitments.public_key_share(p.index);
        issuance::verify_partial(&pk_i, &blinded, p).is_ok()
    });

    // Wallet: combine the first t, unblind, verify.
    let first: Vec<PartialSignature> = partials.iter().take(t).copied().collect();
    let blind_signature =
        issuance::combine(t, &first).map_err(|e| format!("combine first {t}: {e}"))?;
    let signature = issuance::unblind(&blind_signature, &blinding);
    let signature_verifies = issuance::verify(&public_key, &keyset_id, &holder, &signature).is_ok();

    // Another t-subset (the last t, in reverse order) must give the very same signature.
    let other: Vec<PartialSignature> = partials.iter().rev().take(t).copied().collect();
    let other_indices: Vec<u16> = other.iter().map(|p| p.index.get()).collect();
    let other_blind =
        issuance::combine(t, &other).map_err(|e| format!("combine other subset: {e}"))?;
    let other_subset_equal = issuance::unblind(&other_blind, &blinding) == signature;

    // t-1 partials must be refused, not silently combined into a wrong signature.
    let too_few: Vec<PartialSignature> =
        partials.iter().take(t.saturating_sub(1)).copied().collect();
    let too_few_refused = issuance::combine(t, &too_few).is_err();

    // The signature is bound to the holder key: another holder's message does not verify.
    let other_holder = HolderSecret::generate(&mut rng).public_key();
    let wrong_holder_refused =
        issuance::verify(&public_key, &keyset_id, &other_holder, &signature).is_err();

    // Presentation: sign for an epoch, QR text round trip, offline verification.
    let ticket = Ticket {
        keyset_id,
        holder,
        signature,
    };
    let presentation = Presentation::sign(&ticket, &holder_secret, EPOCH);
    let presentation_text = presentation.to_text();
    let decoded = Presentation::from_text(&presentation_text)
        .map_err(|e| format!("decode presentation text: {e}"))?;
    let presentation_roundtrip = decoded == presentation;
    let presentation_verifies = decoded.verify(&public_key, EPOCH, 1).is_ok();
    let stale_epoch_refused = decoded.verify(&public_key, EPOCH + 10, 1).is_err();

    let checks = json!({
        "partials_verify": partials_verify,
        "signature_verifies": signature_verifies,
        "other_subset_equal": other_subset_equal,
        "too_few_refused": too_few_refused,
        "wrong_holder_refused": wrong_holder_refused,
        "presentation_roundtrip": presentation_roundtrip,
        "presentation_verifies": presentation_verifies,
        "stale_epoch_refused": stale_epoch_refused,
    });
    Ok(json!({
        "backend": backend_name(),
        "seed": seed,
        "threshold": threshold,
        "nodes": nodes,
        "public_key": hex::encode(public_key.to_bytes()),
        "keyset_id": keyset_id.to_string(),
        "holder_public_key": hex::encode(holder.as_bytes()),
        "blinded": hex::encode(blinded.to_bytes()),
        "partials": partials.iter().map(|p| hex::encode(p.to_bytes())).collect::<Vec<_>>(),
        "blind_signature": hex::encode(blind_signature.to_bytes()),
        "signature": hex::encode(signature.to_bytes()),
        "other_subset": other_indices,
        "presentation": hex::encode(presentation.encode()),
        "presentation_text": presentation_text,
        "checks": checks,
    }))
}
