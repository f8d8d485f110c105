//! The rotating QR payload: encoding, freshness, tampering, and that it really fits a QR code.

use crate::common;

use qrcode::{EcLevel, QrCode, Version};
use ticketing_crypto::CryptoError;
use ticketing_crypto::presentation::{self, Presentation, epoch_at};
use ticketing_crypto::ticket::{HolderSecret, Ticket};

const EPOCH: u32 = 58_909_000;

fn ticket() -> (common::Setup, Ticket) {
    let s = common::setup(21, 3, 5);
    let t = s.ticket_from(&s.partials[..3]).unwrap();
    (s, t)
}

#[test]
fn a_fresh_presentation_verifies_within_one_epoch_of_the_clock() {
    let (s, t) = ticket();
    let pk = s.keyset.public_key().unwrap();
    let shown = Presentation::sign(&t, &s.holder, EPOCH);
    for now in [EPOCH - 1, EPOCH, EPOCH + 1] {
        shown.verify(&pk, now, 1).unwrap();
    }
    let decoded = Presentation::decode(&shown.encode()).unwrap();
    assert_eq!(decoded, shown);
    assert_eq!(Presentation::from_text(&shown.to_text()).unwrap(), shown);
    assert_eq!(shown.encode().len(), presentation::LEN);
    assert_eq!(presentation::LEN, 157);
}

/// Base45 includes the space. In each 3-character group of the Base45 text only the first two
/// characters can be a space (the third encodes at most 32, the space is 36), and so can the
/// first of the final 2-character group: at most 157 positions, the first one among them (a
/// keyset id starting with 5, 50, 95, 140, 185 or 230 puts a space there). Two of those never
/// hold one: the second character (the version byte is 1) and the final group's (the last byte
/// of an Ed25519 signature is below 32). Random presentations (random keyset id, holder key, sigma point
/// and epoch) put a space at every position that can hold one; the framed text form survives
/// every trim at each of them; the unframed form of earlier wallets is still read (there the
/// space is data: only line breaks around it are ignored).
#[test]
fn a_payload_with_a_space_at_any_position_survives_trimming() {
    use rand::{Rng, SeedableRng};
    let (s, t) = ticket();
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(9);
    // Position 1 encodes (256 + keyset_id[0]) / 45 in 5..=11; position 234 the last byte of the
    // holder signature (< 32) mod 45: never a space.
    let last = presentation::BASE45_LEN - 1;
    let possible: std::collections::BTreeSet<usize> = (0..presentation::BASE45_LEN)
        .filter(|i| i % 3 != 2 && ![1, last - 1, last].contains(i))
        .collect();
    assert_eq!(possible.len(), 155);
    let mut covered = std::collections::BTreeSet::new();
    for _ in 0..4_000 {
        if covered.len() == possible.len() {
            break;
        }
        // Random bytes in every field: a random point for sigma, a fresh holder key.
        let holder = HolderSecret::generate(&mut rng);
        let mut moved = t;
        rng.fill_bytes(&mut moved.keyset_id.0);
        moved.holder = holder.public_key();
        let (point, _) =
            ticketing_crypto::issuance::blind(&moved.keyset_id, &moved.holder, &mut rng);
        moved.signature =
            ticketing_crypto::issuance::Signature::from_bytes(&point.to_bytes()).unwrap();
        let shown = Presentation::sign(&moved, &holder, rng.next_u32());
        let text = shown.to_text();
        assert_eq!(text.len(), presentation::TEXT_LEN);
        let inner = &text[presentation::TEXT_PREFIX.len()..text.len() - 1];
        let new: Vec<usize> = inner
            .char_indices()
            .filter(|(i, c)| *c == ' ' && !covered.contains(i))
            .map(|(i, _)| i)
            .collect();
        if new.is_empty() {
            continue;
        }
        for variant in [
            text.clone(),
            text.trim().to_owned(),
            format!("  {text}\n"),
            format!("\t{text}\r\n"),
            format!(" {text} "),
        ] {
            assert_eq!(
                Presentation::from_text(&variant).unwrap(),
                shown,
                "{variant:?}"
            );
        }
        // The unframed form of earlier wallets still reads, with a line break after it.
        let legacy = base45::encode(shown.encode());
        for variant in [
            legacy.clone(),
            format!("{legacy}\n"),
            format!("{legacy}\r\n"),
        ] {
            assert_eq!(Presentation::from_text(&variant).unwrap(), shown);
        }
        covered.extend(new);
    }
    assert!(
        covered.is_subset(&possible),
        "a space where none can be: {covered:?}"
    );
    assert_eq!(covered, possible, "positions never holding a space");
    // Trimmed, an unframed text with a leading space is another (broken) payload: the reason
    // for the frame.
    let mut moved = t;
    moved.keyset_id.0[0] = 5;
    let legacy = base45::encode(Presentation::sign(&moved, &s.holder, EPOCH).encode());
    assert!(legacy.starts_with(' '));
    assert!(Presentation::from_text(legacy.trim_start()).is_err());
}

#[test]
fn a_screenshot_goes_stale() {
    let (s, t) = ticket();
    let pk = s.keyset.public_key().unwrap();
    // Taken at 12:00:00, shown again two rotations later.
    let taken = epoch_at(1_767_268_800, presentation::DEFAULT_ROTATION_SECONDS);
    let shown = Presentation::sign(&t, &s.holder, taken);
    let later = epoch_at(1_767_268_800 + 60, presentation::DEFAULT_ROTATION_SECONDS);
    assert_eq!(later, taken + 2);
    assert_eq!(
        shown.verify(&pk, later, 1),
        Err(CryptoError::StaleEpoch {
            epoch: taken,
            now: later
        })
    );
    // Re-dating the screenshot breaks the holder signature.
    let redated = Presentation::from_parts(t, later, shown.holder_signature);
    assert_eq!(
        redated.verify(&pk, later, 1),
        Err(CryptoError::InvalidHolderSignature)
    );
}

#[test]
fn someone_else_cannot_present_the_ticket() {
    let (s, t) = ticket();
    let pk = s.keyset.public_key().unwrap();
    let thief = HolderSecret::generate(&mut common::rng(99));
    let shown = Presentation::sign(&t, &thief, EPOCH);
    assert_eq!(
        shown.verify(&pk, EPOCH, 1),
        Err(CryptoError::InvalidHolderSignature)
    );
    // A thief who swaps in their own holder key breaks the BLS signature instead.
    let mut swapped = t;
    swapped.holder = thief.public_key();
    let shown = Presentation::sign(&swapped, &thief, EPOCH);
    assert_eq!(
        shown.verify(&pk, EPOCH, 1),
        Err(CryptoError::InvalidSignature)
    );
}

#[test]
fn every_single_byte_change_is_rejected() {
    let (s, t) = ticket();
    let pk = s.keyset.public_key().unwrap();
    let bytes = Presentation::sign(&t, &s.holder, EPOCH).encode();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut b = bytes;
            b[i] ^= flip;
            let outcome = Presentation::decode(&b).and_then(|p| p.verify(&pk, EPOCH, 1));
            assert!(outcome.is_err(), "byte {i} ^ {flip:#x} accepted");
        }
    }
    assert_eq!(
        Presentation::decode(&bytes[..156]),
        Err(CryptoError::WrongLength {
            what: "presentation",
            expected: 157,
            got: 156
        })
    );
    let mut v2 = bytes;
    v2[0] = 2;
    assert_eq!(
        Presentation::decode(&v2),
        Err(CryptoError::UnsupportedVersion(2))
    );
}

fn render(code: &QrCode, scale: usize) -> (usize, Vec<u8>) {
    let quiet = 4;
    let w = code.width();
    let size = (w + 2 * quiet) * scale;
    let colors = code.to_colors();
    let mut px = vec![255u8; size * size];
    for y in 0..size {
        for x in 0..size {
            let (mx, my) = (
                (x / scale) as isize - quiet as isize,
                (y / scale) as isize - quiet as isize,
            );
            let inside = mx >= 0 && my >= 0 && (mx as usize) < w && (my as usize) < w;
            if inside && colors[my as usize * w + mx as usize] == qrcode::Color::Dark {
                px[y * size + x] = 0;
            }
        }
    }
    (size, px)
}

fn decode_qr(size: usize, px: &[u8]) -> String {
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(size, size, |x, y| px[y * size + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "expected one QR code in the render");
    grids[0].decode().unwrap().1
}

/// The payload fits a version 11 QR code at error correction M, rendered and read back.
#[test]
fn the_payload_fits_qr_version_11_at_ecc_m_and_reads_back() {
    let (s, t) = ticket();
    let pk = s.keyset.public_key().unwrap();
    let text = Presentation::sign(&t, &s.holder, EPOCH).to_text();

    let v11 = QrCode::with_version(text.as_bytes(), Version::Normal(11), EcLevel::M).unwrap();
    let (size, px) = render(&v11, 4);
    let read = decode_qr(size, &px);
    assert_eq!(read, text);
    Presentation::from_text(&read)
        .unwrap()
        .verify(&pk, EPOCH, 1)
        .unwrap();

    // The smallest code the encoder picks at M is no bigger than version 11 (it is 9).
    let auto = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).unwrap();
    let Version::Normal(v) = auto.version() else {
        panic!("micro QR chosen")
    };
    assert!(v <= 11, "needs version {v}");
    let (size, px) = render(&auto, 4);
    assert_eq!(decode_qr(size, &px), text);
}

/// A holder key written in a non-canonical form (y + p for small y, which decompression
/// accepts) or of small order is malformed: refused when the payload is decoded, before any
/// signature is checked, so the verifier's code is `malformed`, not `invalid_signature`.
#[test]
fn a_non_canonical_or_small_order_holder_key_is_malformed() {
    let (s, t) = ticket();
    let good = Presentation::sign(&t, &s.holder, EPOCH).encode();
    let mut decompressible = 0;
    for k in 0u8..19 {
        for sign in [0u8, 0x80] {
            // p + k, little-endian: p = 2^255 - 19 = ed ff .. ff 7f.
            let mut key = [0xffu8; 32];
            key[0] = 0xed + k;
            key[31] = 0x7f | sign;
            if ed25519_dalek::VerifyingKey::from_bytes(&key).is_ok() {
                decompressible += 1;
            }
            let mut bytes = good;
            bytes[9..41].copy_from_slice(&key);
            match Presentation::decode(&bytes) {
                Err(CryptoError::Malformed { what, .. }) => assert_eq!(what, "holder public key"),
                other => panic!("y = p + {k}, sign {sign}: {other:?}"),
            }
        }
    }
    // The case is real: the plain decoder takes some of these encodings.
    assert!(decompressible > 0);
    // The identity (y = 1), a small-order point in canonical form.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut bytes = good;
    bytes[9..41].copy_from_slice(&identity);
    assert!(matches!(
        Presentation::decode(&bytes),
        Err(CryptoError::Malformed { .. })
    ));
}
