//! What the rotating QR code carries, and its offline verification.
//!
//! Binary layout (157 bytes, big-endian integers):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version (1) |
//! | 8 | keyset id |
//! | 32 | holder public key (Ed25519) |
//! | 48 | ticket signature sigma (G1, compressed) |
//! | 4 | epoch = floor(unix_time / rotation_seconds) |
//! | 64 | holder signature over (tag, keyset id, holder key, epoch) |
//!
//! In the QR code the payload travels as Base45 text (RFC 9285) so it uses the QR alphanumeric
//! mode and survives any scanner's text handling (ADR-0002). The text form is framed:
//! `TK1:` + 236 Base45 characters + `:` (241 characters, still version 9 at ECC M). Base45
//! includes the space, so an unframed payload could begin or end with one, and every browser,
//! terminal or test helper that trims would break it; the frame makes trimming harmless
//! (ADR-0009). The unframed form of earlier wallets is still read.

use crate::issuance::Signature;
use crate::keyset::{KeysetId, PublicKey};
use crate::ticket::{HolderPublicKey, HolderSecret, Ticket};
use crate::{CryptoError, domain};

/// Current payload version.
pub const VERSION: u8 = 1;
/// Payload size in bytes.
pub const LEN: usize = 1 + KeysetId::LEN + HolderPublicKey::LEN + Signature::LEN + 4 + 64;
/// Start of the framed text form.
pub const TEXT_PREFIX: &str = "TK1:";
/// End of the framed text form.
pub const TEXT_SUFFIX: &str = ":";
/// Characters of the Base45 text of [`LEN`] bytes.
pub const BASE45_LEN: usize = LEN / 2 * 3 + 2;
/// Characters of the framed text form.
pub const TEXT_LEN: usize = TEXT_PREFIX.len() + BASE45_LEN + TEXT_SUFFIX.len();
/// Default rotation period.
pub const DEFAULT_ROTATION_SECONDS: u64 = 30;

/// The epoch of a printed ticket (`ticketing wallet print`): a code on paper cannot rotate, so
/// it carries this reserved epoch (no clock reaches it: year 6053 at 30 s) instead of the
/// current one. Verifiers skip the freshness check for it and accept it once, as a single ride
/// without transfers (docs/adr/0017-printed-tickets.md).
pub const PRINTED_EPOCH: u32 = u32::MAX;

/// The epoch a unix time falls in. Rotation 0 is treated as 1 second.
pub fn epoch_at(unix_seconds: u64, rotation_seconds: u64) -> u32 {
    let e = unix_seconds / rotation_seconds.max(1);
    u32::try_from(e).unwrap_or(u32::MAX)
}

/// The message the holder key signs for one epoch.
pub fn presentation_message(keyset_id: &KeysetId, holder: &HolderPublicKey, epoch: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain::PRESENTATION.len() + 8 + 32 + 4);
    m.extend_from_slice(domain::PRESENTATION);
    m.extend_from_slice(&keyset_id.0);
    m.extend_from_slice(holder.as_bytes());
    m.extend_from_slice(&epoch.to_be_bytes());
    m
}

/// A ticket shown for one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presentation {
    /// The ticket shown.
    pub ticket: Ticket,
    /// The epoch the holder signed.
    pub epoch: u32,
    /// Ed25519 signature by the holder key over [`presentation_message`].
    pub holder_signature: [u8; 64],
}

impl Presentation {
    /// Present `ticket` for `epoch`, signing with its holder secret (native wallets; the browser
    /// signs [`presentation_message`] with WebCrypto and uses [`Presentation::from_parts`]).
    pub fn sign(ticket: &Ticket, secret: &HolderSecret, epoch: u32) -> Self {
        let msg = presentation_message(&ticket.keyset_id, &ticket.holder, epoch);
        Self::from_parts(*ticket, epoch, secret.sign(&msg))
    }

    /// Assemble from a signature made elsewhere.
    pub fn from_parts(ticket: Ticket, epoch: u32, holder_signature: [u8; 64]) -> Self {
        Self {
            ticket,
            epoch,
            holder_signature,
        }
    }

    /// The binary payload.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        let mut w = Writer {
            buf: &mut out,
            pos: 0,
        };
        w.put(&[VERSION]);
        w.put(&self.ticket.keyset_id.0);
        w.put(self.ticket.holder.as_bytes());
        w.put(&self.ticket.signature.to_bytes());
        w.put(&self.epoch.to_be_bytes());
        w.put(&self.holder_signature);
        out
    }

    /// Parse a binary payload. Every field is validated (points subgroup-checked); any
    /// malformed input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let version = *bytes
            .first()
            .ok_or(CryptoError::length("presentation", LEN, 0))?;
        if version != VERSION {
            return Err(CryptoError::UnsupportedVersion(version));
        }
        if bytes.len() != LEN {
            return Err(CryptoError::length("presentation", LEN, bytes.len()));
        }
        let mut r = Reader { buf: bytes, pos: 1 };
        let keyset_id = KeysetId(r.array()?);
        let holder = HolderPublicKey::from_bytes(r.take(HolderPublicKey::LEN)?)?;
        let signature = Signature::from_bytes(r.take(Signature::LEN)?)?;
        let epoch = u32::from_be_bytes(r.array()?);
        let holder_signature = r.array()?;
        Ok(Self {
            ticket: Ticket {
                keyset_id,
                holder,
                signature,
            },
            epoch,
            holder_signature,
        })
    }

    /// The QR text form: `TK1:` + Base45 + `:`, safe to trim.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(TEXT_LEN);
        text.push_str(TEXT_PREFIX);
        text.push_str(&base45::encode(self.encode()));
        text.push_str(TEXT_SUFFIX);
        text
    }

    /// Parse the QR text form. Surrounding whitespace is ignored. The unframed Base45 text of
    /// earlier wallets is read too; there the space is data (it is one of Base45's 45
    /// characters), so only line breaks and tabs around it are ignored.
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        let trimmed = text.trim();
        let base45_text = match trimmed
            .strip_prefix(TEXT_PREFIX)
            .and_then(|t| t.strip_suffix(TEXT_SUFFIX))
        {
            Some(inner) if trimmed.len() == TEXT_LEN => inner,
            _ => text.trim_matches(['\n', '\r', '\t']),
        };
        let bytes = base45::decode(base45_text).map_err(|_| CryptoError::Malformed {
            what: "presentation",
            reason: "not Base45 text",
        })?;
        Self::decode(&bytes)
    }

    /// Whether this is a printed ticket's static code ([`PRINTED_EPOCH`]).
    pub fn is_printed(&self) -> bool {
        self.epoch == PRINTED_EPOCH
    }

    /// Offline checks, cheapest first (a printed code has no epoch to be fresh): epoch within `max_skew` epochs of `now_epoch`, holder
    /// signature, then the BLS ticket signature under the keyset key. Keyset lookup, validity
    /// window and the spent/deny checks belong to the caller, which holds the manifest.
    pub fn verify(
        &self,
        public_key: &PublicKey,
        now_epoch: u32,
        max_skew: u32,
    ) -> Result<(), CryptoError> {
        if !self.is_printed() && self.epoch.abs_diff(now_epoch) > max_skew {
            return Err(CryptoError::StaleEpoch {
                epoch: self.epoch,
                now: now_epoch,
            });
        }
        let msg = presentation_message(&self.ticket.keyset_id, &self.ticket.holder, self.epoch);
        self.ticket.holder.verify(&msg, &self.holder_signature)?;
        self.ticket.verify(public_key)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8; LEN],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CryptoError> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(CryptoError::length("presentation", LEN, self.buf.len()))?;
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CryptoError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}
