//! The test-card stub processor: documented numbers succeed or decline deterministically, like
//! a real processor's test mode. No money moves.
//!
//! | number | outcome |
//! |---|---|
//! | `4242 4242 4242 4242` | succeeds |
//! | `4000 0000 0000 0002` | declined (generic) |
//! | `4000 0000 0000 9995` | declined (insufficient funds) |
//! | any other Luhn-valid number | declined (not a test card) |
//! | not 12-19 digits, other characters, or a failed Luhn check | malformed |
//!
//! Spaces and hyphens are ignored. A [`CardNumber`] prints `<redacted>` in Debug and Display
//! and is zeroized on drop; it is never stored or logged, not even its last digits.
//!
//! The service talks to a [`Processor`]; [`StubProcessor`] is the test-mode one. Every charge
//! carries an idempotency key (the receipt digest): a second charge with a key that already
//! paid is a no-op that answers like the first, as real processors do, so a checkout retried
//! after a crash between charging and storing the receipt never pays twice.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use thiserror::Error;
use ticketing_protocol::Digest32;
use zeroize::Zeroizing;

/// The test number that succeeds.
pub const SUCCEEDS: &str = "4242 4242 4242 4242";
/// The test number declined without a reason.
pub const DECLINED: &str = "4000 0000 0000 0002";
/// The test number declined for insufficient funds.
pub const INSUFFICIENT_FUNDS: &str = "4000 0000 0000 9995";

const MIN_DIGITS: usize = 12;
const MAX_DIGITS: usize = 19;

/// A card number that is not even well-formed (the processor is never asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CardError {
    /// A character other than a digit, a space or a hyphen.
    #[error("a card number has only digits, spaces and hyphens")]
    NotDigits,
    /// Fewer than 12 or more than 19 digits.
    #[error("a card number has 12 to 19 digits")]
    Length,
    /// The Luhn check digit does not match: a typo.
    #[error("the card number is mistyped (its check digit does not match)")]
    Luhn,
}

/// Why the (stub) processor declined a well-formed card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Decline {
    /// Declined without a reason (`4000 0000 0000 0002`).
    #[error("the card was declined")]
    Generic,
    /// Insufficient funds (`4000 0000 0000 9995`).
    #[error("insufficient funds")]
    InsufficientFunds,
    /// A valid number that is not one of the documented test cards.
    #[error("not a test card: this service only accepts the documented test numbers")]
    NotATestCard,
}

/// A well-formed (Luhn-valid) card number, digits only. Redacted in Debug and Display,
/// zeroized on drop.
pub struct CardNumber(Zeroizing<String>);

impl CardNumber {
    /// Check a number as typed: spaces and hyphens are ignored, anything else must be a digit,
    /// 12 to 19 digits, valid Luhn check digit.
    pub fn parse(typed: &str) -> Result<Self, CardError> {
        // Capacity for the longest number, so pushing never reallocates and leaves a copy
        // behind in freed memory.
        let mut digits = Zeroizing::new(String::with_capacity(MAX_DIGITS));
        for c in typed.chars() {
            match c {
                '0'..='9' if digits.len() == MAX_DIGITS => return Err(CardError::Length),
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => return Err(CardError::NotDigits),
            }
        }
        if digits.len() < MIN_DIGITS {
            return Err(CardError::Length);
        }
        if !luhn_valid(&digits) {
            return Err(CardError::Luhn);
        }
        Ok(Self(digits))
    }

    /// [`CardNumber::parse`] on an owned string (e.g. from a request body), which is zeroized
    /// whatever the outcome.
    pub fn from_typed(typed: String) -> Result<Self, CardError> {
        let typed = Zeroizing::new(typed);
        Self::parse(&typed)
    }

    fn is(&self, documented: &str) -> bool {
        documented
            .chars()
            .filter(char::is_ascii_digit)
            .eq(self.0.chars())
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardNumber(<redacted>)")
    }
}

impl fmt::Display for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted card number>")
    }
}

/// The stub's decision for `card` (the outcome depends only on the number).
pub fn outcome(card: &CardNumber) -> Result<(), Decline> {
    if card.is(SUCCEEDS) {
        Ok(())
    } else if card.is(DECLINED) {
        Err(Decline::Generic)
    } else if card.is(INSUFFICIENT_FUNDS) {
        Err(Decline::InsufficientFunds)
    } else {
        Err(Decline::NotATestCard)
    }
}

/// A card payment processor.
#[async_trait]
pub trait Processor: Send + Sync + fmt::Debug {
    /// Charge `amount` minor units of `currency` to `card`, idempotently per
    /// `idempotency_key`: if a charge with that key already succeeded, nothing moves and the
    /// answer is `Ok`. A declined charge moves nothing and records nothing, so the same key
    /// may be charged again (with another card).
    async fn charge(
        &self,
        card: &CardNumber,
        amount: u64,
        currency: &str,
        idempotency_key: &Digest32,
    ) -> Result<(), Decline>;
}

/// A charge that moved (pretend) money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
}

/// The test-mode processor: documented numbers succeed or decline deterministically
/// ([`outcome`]); successful charges are kept in memory per idempotency key (nothing about the
/// card), so tests can count them.
#[derive(Debug, Default)]
pub struct StubProcessor {
    charges: Mutex<HashMap<Digest32, Charge>>,
}

impl StubProcessor {
    /// A processor that has charged nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many charges moved money (repeats of a paid idempotency key do not count).
    pub fn charges(&self) -> usize {
        self.log().len()
    }

    /// The charge made under `idempotency_key`, if any.
    pub fn charge_for(&self, idempotency_key: &Digest32) -> Option<Charge> {
        self.log().get(idempotency_key).cloned()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, HashMap<Digest32, Charge>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert).
        self.charges.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Processor for StubProcessor {
    async fn charge(
        &self,
        card: &CardNumber,
        amount: u64,
        currency: &str,
        idempotency_key: &Digest32,
    ) -> Result<(), Decline> {
        let mut log = self.log();
        if log.contains_key(idempotency_key) {
            return Ok(());
        }
        outcome(card)?;
        log.insert(
            *idempotency_key,
            Charge {
                amount,
                currency: currency.to_owned(),
            },
        );
        Ok(())
    }
}

/// The Luhn (mod 10) check over ASCII digits.
fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let d = u32::from(b.wrapping_sub(b'0'));
        sum += if i % 2 == 1 {
            let dd = 2 * d;
            if dd > 9 { dd - 9 } else { dd }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(typed: &str) -> Result<Result<(), Decline>, CardError> {
        CardNumber::parse(typed).map(|c| super::outcome(&c))
    }

    #[tokio::test]
    async fn the_stub_charges_once_per_idempotency_key() {
        let stub = StubProcessor::new();
        let ok = CardNumber::parse(SUCCEEDS).unwrap();
        let declined = CardNumber::parse(DECLINED).unwrap();
        let (a, b) = (Digest32([1; 32]), Digest32([2; 32]));
        // A decline records nothing: the key can still be paid, with another card.
        assert_eq!(
            stub.charge(&declined, 250, "EUR", &a).await,
            Err(Decline::Generic)
        );
        assert_eq!(stub.charges(), 0);
        stub.charge(&ok, 250, "EUR", &a).await.unwrap();
        // A repeat is a no-op answering like the first, whatever the card.
        stub.charge(&ok, 250, "EUR", &a).await.unwrap();
        stub.charge(&declined, 250, "EUR", &a).await.unwrap();
        assert_eq!(stub.charges(), 1);
        stub.charge(&ok, 700, "EUR", &b).await.unwrap();
        assert_eq!(stub.charges(), 2);
        assert_eq!(
            stub.charge_for(&a),
            Some(Charge {
                amount: 250,
                currency: "EUR".into()
            })
        );
    }

    #[test]
    fn documented_numbers_behave_as_documented() {
        assert_eq!(outcome(SUCCEEDS), Ok(Ok(())));
        assert_eq!(outcome("4242-4242-4242-4242"), Ok(Ok(())));
        assert_eq!(outcome("4242424242424242"), Ok(Ok(())));
        assert_eq!(outcome(DECLINED), Ok(Err(Decline::Generic)));
        assert_eq!(
            outcome(INSUFFICIENT_FUNDS),
            Ok(Err(Decline::InsufficientFunds))
        );
        assert_eq!(
            outcome("4111 1111 1111 1111"),
            Ok(Err(Decline::NotATestCard))
        );
        assert_eq!(outcome("79927398713"), Err(CardError::Length));
    }

    #[test]
    fn malformed_numbers_are_refused_before_the_processor() {
        assert_eq!(outcome("4242 4242 4242 4241"), Err(CardError::Luhn));
        assert_eq!(outcome("4242 4242 4242 424x"), Err(CardError::NotDigits));
        assert_eq!(outcome(""), Err(CardError::Length));
        assert_eq!(outcome("4242"), Err(CardError::Length));
        assert_eq!(outcome(&"4".repeat(20)), Err(CardError::Length));
        assert_eq!(outcome(&"0".repeat(10_000)), Err(CardError::Length));
        assert_eq!(
            outcome("４２４２４２４２４２４２４２４２"),
            Err(CardError::NotDigits)
        );
    }

    #[test]
    fn the_number_never_prints() {
        let card = CardNumber::parse(SUCCEEDS).unwrap();
        for shown in [format!("{card:?}"), card.to_string()] {
            assert!(!shown.contains("4242"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
        for e in [CardError::NotDigits, CardError::Length, CardError::Luhn] {
            assert!(!e.to_string().contains("4242"));
        }
    }
}
