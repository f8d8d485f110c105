//! The offline checks of a presentation, shared by the coordinator and every validator so both
//! sides give the same stable codes for the same payload.
//!
//! [`screen`] does everything except the BLS pairing check (parse, keyset, window, epoch,
//! holder signature), cheapest first; [`check`] adds the pairing. The coordinator screens each
//! scan and verifies the surviving tickets' BLS signatures in one batch
//! (`ticketing_crypto::batch`).

use ticketing_crypto::presentation::Presentation;
use ticketing_crypto::ticket::Serial;

use crate::ErrorCode;
use crate::manifest::{KeysetInfo, Manifest, ProductKind};

/// Whether a presentation made at `epoch` can come from a clock within `skew` seconds of
/// `at`: the epoch's interval `[epoch * rotation, (epoch + 1) * rotation)` meets
/// `[at - skew, at + skew]`. A wallet clock off by up to `skew` is accepted wherever in its
/// epoch the scan falls; a screenshot goes stale `skew` seconds after its epoch ends.
pub fn epoch_fresh(epoch: u32, at: u64, rotation_seconds: u64, skew: u64) -> bool {
    let rotation = rotation_seconds.max(1);
    let start = u64::from(epoch).saturating_mul(rotation);
    let end = start.saturating_add(rotation);
    start <= at.saturating_add(skew) && end > at.saturating_sub(skew)
}

/// The one rule for a single's validity (ADR-0011): it may be first used only inside its
/// keyset's window `[valid_from, valid_until)`; it is then valid for its transfer time after
/// that first use, running on past the window's end. Returns the end of its validity, or
/// `None` when `first_use` lies outside the window.
pub fn single_valid_until(
    valid_from: u64,
    valid_until: u64,
    transfer_seconds: u64,
    first_use: u64,
) -> Option<u64> {
    (valid_from <= first_use && first_use < valid_until)
        .then(|| first_use.saturating_add(transfer_seconds))
}

/// The transfer time a scan of a single allows after the ticket's first use: the product's,
/// or none for a printed code (docs/adr/0017-printed-tickets.md). A ticket's transfer time is
/// the least of its scans': once shown on paper, it is spent by that one ride.
pub fn transfer_seconds(presentation: &Presentation, transfer_minutes: u32) -> u64 {
    if presentation.is_printed() {
        0
    } else {
        u64::from(transfer_minutes).saturating_mul(60)
    }
}

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
    /// A single scanned after its keyset's window ended (within its transfer time): valid
    /// only as a transfer of a first use inside the window ([`single_valid_until`]), which the
    /// verifier must know of.
    pub after_end: bool,
}

/// Parse `text` (the QR's Base45) and run the cheap checks at unix time `at`: keyset known
/// (`unknown_keyset`), inside its window (`not_yet_valid`; `expired` after the end, or for a
/// single after the end plus its transfer time), epoch within the manifest's clock skew of
/// `at` (`stale_epoch`, [`epoch_fresh`]), holder signature (`invalid_signature`).
pub fn screen<'m>(manifest: &'m Manifest, text: &str, at: u64) -> Result<Screened<'m>, ErrorCode> {
    let presentation = Presentation::from_text(text).map_err(|_| ErrorCode::Malformed)?;
    let ticket = &presentation.ticket;
    let keyset = manifest
        .keyset(&ticket.keyset_id)
        .ok_or(ErrorCode::UnknownKeyset)?;
    let product = manifest
        .product(&keyset.params.product)
        .ok_or(ErrorCode::UnknownKeyset)?;
    if at < keyset.params.valid_from {
        return Err(ErrorCode::NotYetValid);
    }
    if at
        >= keyset
            .params
            .valid_until
            .saturating_add(product.transfer_seconds())
    {
        return Err(ErrorCode::Expired);
    }
    if presentation.is_printed() {
        // Paper cannot rotate: a printed code is accepted once, as a ride without transfers
        // (`transfer_seconds`), and only for singles: a pass is ridden many times.
        if product.kind == ProductKind::Pass {
            return Err(ErrorCode::NotPrintable);
        }
    } else if !epoch_fresh(
        presentation.epoch,
        at,
        manifest.rotation_seconds,
        manifest.clock_skew_seconds,
    ) {
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
        after_end: at >= keyset.params.valid_until,
        presentation,
        keyset,
        kind: product.kind,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A wallet clock off by up to the skew is accepted wherever in its epoch the scan falls;
    /// beyond it, never.
    #[test]
    fn any_skew_up_to_the_limit_is_fresh_and_beyond_it_is_stale() {
        let (rotation, skew) = (30, 60);
        for at in 1_800_000_000u64..1_800_000_000 + 2 * rotation {
            for offset in -60i64..=60 {
                let wallet = at.saturating_add_signed(offset);
                let epoch = u32::try_from(wallet / rotation).unwrap_or(u32::MAX);
                assert!(epoch_fresh(epoch, at, rotation, skew), "{at} {offset}");
            }
            for offset in [-200i64, -91, 91, 200] {
                let wallet = at.saturating_add_signed(offset);
                let epoch = u32::try_from(wallet / rotation).unwrap_or(u32::MAX);
                assert!(!epoch_fresh(epoch, at, rotation, skew), "{at} {offset}");
            }
        }
    }
}
