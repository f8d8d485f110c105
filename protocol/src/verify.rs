//! The offline checks of a presentation, shared by the coordinator and every validator so both
//! sides give the same stable codes for the same payload.
//!
//! [`screen`] does everything except the BLS pairing check (parse, keyset, window, epoch,
//! holder signature), cheapest first; [`check`] adds the pairing. The coordinator screens each
//! scan and verifies the surviving tickets' BLS signatures in one batch
//! (`ticketing_crypto::batch`).

use ticketing_crypto::presentation::{Presentation, epoch_at};
use ticketing_crypto::ticket::Serial;

use crate::ErrorCode;
use crate::manifest::{KeysetInfo, Manifest, ProductKind};

/// How many epochs a presentation may be away from the verifier's clock (the protocol's +-1).
pub const MAX_EPOCH_SKEW: u32 = 1;

/// A presentation that passed every check except (for [`screen`]) the BLS signature.
#[derive(Debug, Clone)]
pub struct Screened<'m> {
    /// The parsed presentation.
    pub presentation: Presentation,
    /// Its ledger key.
    pub serial: Serial,
    /// The keyset that signed it (window, key).
    pub keyset: &'m KeysetInfo,
    /// How the product is used at the gate.
    pub kind: ProductKind,
}

/// Parse `text` (the QR's Base45) and run the cheap checks at unix time `at`: keyset known
/// (`unknown_keyset`), inside its window (`not_yet_valid`, `expired`), epoch within
/// [`MAX_EPOCH_SKEW`] of `at` (`stale_epoch`), holder signature (`invalid_signature`).
pub fn screen<'m>(manifest: &'m Manifest, text: &str, at: u64) -> Result<Screened<'m>, ErrorCode> {
    let presentation = Presentation::from_text(text).map_err(|_| ErrorCode::Malformed)?;
    let ticket = &presentation.ticket;
    let keyset = manifest
        .keyset(&ticket.keyset_id)
        .ok_or(ErrorCode::UnknownKeyset)?;
    let kind = manifest
        .product(&keyset.params.product)
        .ok_or(ErrorCode::UnknownKeyset)?
        .kind;
    if at < keyset.params.valid_from {
        return Err(ErrorCode::NotYetValid);
    }
    if at >= keyset.params.valid_until {
        return Err(ErrorCode::Expired);
    }
    let now_epoch = epoch_at(at, manifest.rotation_seconds);
    if presentation.epoch.abs_diff(now_epoch) > MAX_EPOCH_SKEW {
        return Err(ErrorCode::StaleEpoch);
    }
    let message = ticketing_crypto::presentation::presentation_message(
        &ticket.keyset_id,
        &ticket.holder,
        presentation.epoch,
    );
    ticket
        .holder
        .verify(&message, &presentation.holder_signature)
        .map_err(|_| ErrorCode::InvalidSignature)?;
    Ok(Screened {
        serial: ticket.serial(),
        presentation,
        keyset,
        kind,
    })
}

/// [`screen`], then the BLS ticket signature under the keyset key (`invalid_signature`).
pub fn check<'m>(manifest: &'m Manifest, text: &str, at: u64) -> Result<Screened<'m>, ErrorCode> {
    let screened = screen(manifest, text, at)?;
    screened
        .presentation
        .ticket
        .verify(&screened.keyset.public_key)
        .map_err(|_| ErrorCode::InvalidSignature)?;
    Ok(screened)
}
