//! Cash voucher codes: `XXXX-XXXX-XXXX-XXXX`, 15 random Crockford base32 characters (75 bits)
//! followed by one check character.
//!
//! The check character is computed with the Luhn mod N algorithm over the 32-symbol Crockford
//! alphabet `0123456789ABCDEFGHJKMNPQRSTVWXYZ` (no I, L, O, U). It catches every single
//! mistyped character and every swap of two adjacent different characters except `0Z` <-> `Z0`
//! (the one pair Luhn mod 32 cannot tell apart; the tests check both statements exhaustively).
//! Parsing is forgiving the way Crockford intends: case does not matter, hyphens and whitespace
//! are ignored, and `I`/`L` read as `1`, `O` as `0`.
//!
//! This module does no IO and is built for wasm32 too: the wallet runs [`VoucherCode::parse`]
//! on what the passenger typed before sending anything. The payments service stores only
//! [`VoucherCode::hash`] (75 random bits make a plain, unsalted hash safe against guessing).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Digest32;

/// Domain tag of [`VoucherCode::hash`].
pub const HASH_TAG: &[u8] = b"ticketing/v1/voucher";

/// The Crockford base32 alphabet; a symbol's value is its position.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters in a code, check character included (separators not counted).
pub const CODE_LEN: usize = 16;

/// Random characters in a code.
pub const DATA_LEN: usize = CODE_LEN - 1;

/// Number of symbols, the N of Luhn mod N.
const N: u32 = 32;

/// Why a typed voucher code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VoucherError {
    /// The input does not have 16 code characters (separators not counted).
    #[error("a voucher code has {CODE_LEN} characters, this one has {found}")]
    WrongLength {
        /// Code characters found.
        found: usize,
    },
    /// A character that is neither a Crockford base32 symbol nor a separator.
    #[error("`{character}` (character {position}) cannot appear in a voucher code")]
    InvalidCharacter {
        /// The character as typed.
        character: char,
        /// Its 1-based position in the input as typed, separators counted.
        position: usize,
    },
    /// Every character is valid but the check character does not match: a typo.
    #[error("the voucher code is mistyped (its check character does not match)")]
    CheckFailed,
}

/// A voucher code with a valid check character, held in normalised form (16 uppercase
/// alphabet characters, no separators). Redacted in Debug (it is a bearer secret), shown in
/// full by Display as `XXXX-XXXX-XXXX-XXXX`, zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct VoucherCode([u8; CODE_LEN]);

impl VoucherCode {
    /// A fresh code: 15 uniformly random symbols (75 bits) and the check character.
    pub fn generate(rng: &mut impl rand_core::CryptoRng) -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; DATA_LEN]);
        rng.fill_bytes(bytes.as_mut());
        let mut values = [0u8; CODE_LEN];
        // 256 is a multiple of 32, so masking keeps every symbol uniform.
        for (slot, b) in values.iter_mut().zip(bytes.iter()) {
            *slot = b & 31;
        }
        let check = check_value(values.iter().take(DATA_LEN).copied());
        if let Some(last) = values.last_mut() {
            *last = check;
        }
        let code = Self(values.map(symbol));
        values.zeroize();
        code
    }

    /// Parse a code as a person typed it: case-insensitive, hyphens and whitespace ignored,
    /// `I`/`L` read as `1` and `O` as `0`. Errors name the first bad character, else a wrong
    /// length, else a failed check.
    pub fn parse(input: &str) -> Result<Self, VoucherError> {
        let mut values = [0u8; CODE_LEN];
        let mut found = 0usize;
        for (i, c) in input.chars().enumerate() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let v = value_of(c).ok_or(VoucherError::InvalidCharacter {
                character: c,
                position: i + 1,
            })?;
            if let Some(slot) = values.get_mut(found) {
                *slot = v;
            }
            found += 1;
        }
        if found != CODE_LEN {
            return Err(VoucherError::WrongLength { found });
        }
        if luhn_sum(values.iter().copied(), false) % N != 0 {
            return Err(VoucherError::CheckFailed);
        }
        let code = Self(values.map(symbol));
        values.zeroize();
        Ok(code)
    }

    /// The 16 normalised characters without separators.
    pub fn as_str(&self) -> &str {
        // Always ASCII: every byte comes from `ALPHABET`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// SHA-256(`HASH_TAG` || the 16 normalised characters): what the payments service stores.
    pub fn hash(&self) -> Digest32 {
        let mut h = Sha256::new();
        h.update(HASH_TAG);
        h.update(self.0);
        Digest32(h.finalize().into())
    }
}

impl fmt::Display for VoucherCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.as_str().as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).unwrap_or_default())?;
        }
        Ok(())
    }
}

impl fmt::Debug for VoucherCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VoucherCode(<redacted>)")
    }
}

impl FromStr for VoucherCode {
    type Err = VoucherError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The value of a typed character, with Crockford's normalisation; `None` if it is not one.
fn value_of(c: char) -> Option<u8> {
    let upper = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    let byte = u8::try_from(upper).ok()?;
    ALPHABET
        .iter()
        .position(|&a| a == byte)
        .and_then(|p| u8::try_from(p).ok())
}

/// The alphabet character of a value below 32.
fn symbol(value: u8) -> u8 {
    ALPHABET.get(usize::from(value)).copied().unwrap_or(b'0')
}

/// Luhn mod N sum over `values` (left to right). Factors alternate 1, 2, 1, ... from the
/// right; when `rightmost_doubled`, the rightmost value is doubled instead (the data when the
/// check character is still to be appended).
fn luhn_sum(values: impl DoubleEndedIterator<Item = u8>, rightmost_doubled: bool) -> u32 {
    let mut double = rightmost_doubled;
    let mut sum = 0;
    for v in values.rev() {
        let addend = if double {
            2 * u32::from(v)
        } else {
            u32::from(v)
        };
        // "Sum of the digits" of the addend written in base N.
        sum += addend / N + addend % N;
        double = !double;
    }
    sum
}

/// The check value for the data values: the one that makes the whole sum divisible by N.
fn check_value(data: impl DoubleEndedIterator<Item = u8>) -> u8 {
    let rem = luhn_sum(data, true) % N;
    u8::try_from((N - rem) % N).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha20Rng;

    fn code(seed: u64) -> VoucherCode {
        VoucherCode::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    /// The code's 16 values.
    fn values(c: &VoucherCode) -> [u8; CODE_LEN] {
        c.0.map(|b| value_of(char::from(b)).unwrap())
    }

    fn text(values: &[u8]) -> String {
        values.iter().map(|&v| char::from(symbol(v))).collect()
    }

    /// A valid code holding `a`, `b` at positions `i`, `i + 1` (the check character may be `b`),
    /// the other data positions from `seed`.
    fn code_with_pair(seed: u64, i: usize, a: u8, b: u8) -> [u8; CODE_LEN] {
        let mut v = values(&code(seed));
        v[i] = a;
        if i + 1 < DATA_LEN {
            v[i + 1] = b;
            v[DATA_LEN] = check_value(v[..DATA_LEN].iter().copied());
            return v;
        }
        // b is the check character: adjust another data position until the check equals b
        // (changing one data symbol permutes the check, so one of the 32 values works).
        let other = if i == 0 { 1 } else { 0 };
        for x in 0..32 {
            v[other] = x;
            if check_value(v[..DATA_LEN].iter().copied()) == b {
                v[DATA_LEN] = b;
                return v;
            }
        }
        unreachable!("a substitution permutes the check value");
    }

    #[test]
    fn generated_codes_round_trip_through_display_and_parse() {
        for seed in 0..200 {
            let c = code(seed);
            let shown = c.to_string();
            assert_eq!(shown.len(), 19);
            assert_eq!(shown.matches('-').count(), 3);
            assert_eq!(VoucherCode::parse(&shown).unwrap(), c);
            assert_eq!(VoucherCode::parse(&shown.to_lowercase()).unwrap(), c);
            assert_eq!(VoucherCode::parse(c.as_str()).unwrap(), c);
            let spaced = shown.replace('-', " ");
            assert_eq!(format!(" {spaced}\t").parse::<VoucherCode>().unwrap(), c);
        }
    }

    #[test]
    fn crockford_look_alikes_normalise() {
        // Find codes containing a 1 and a 0, then type them as I/l and O/o.
        let mut seen = 0;
        for seed in 0..500 {
            let c = code(seed);
            let s = c.to_string();
            if !(s.contains('1') && s.contains('0')) {
                continue;
            }
            for (one, zero) in [("I", "O"), ("l", "o"), ("L", "O"), ("i", "o")] {
                let typed = s.replace('1', one).replace('0', zero);
                let parsed = VoucherCode::parse(&typed).unwrap();
                assert_eq!(parsed, c);
                assert_eq!(parsed.hash(), c.hash());
            }
            seen += 1;
        }
        assert!(seen > 10, "only {seen} codes had both a 0 and a 1");
    }

    #[test]
    fn known_answers() {
        // Hand-computed: doubling the rightmost data value 1 gives 2, so the check is 32 - 2 =
        // 30 = `Y`; for Z (31): 62 = 1*32 + 30, digit sum 31, check 1.
        for (data, check) in [
            ("000000000000000", '0'),
            ("000000000000001", 'Y'),
            ("00000000000000Z", '1'),
            ("000000000000010", 'Z'),
        ] {
            let full = format!("{data}{check}");
            assert!(VoucherCode::parse(&full).is_ok(), "{full}");
        }
        let c = VoucherCode::parse("0000-0000-0000-001Y").unwrap();
        assert_eq!(c.to_string(), "0000-0000-0000-001Y");
        let mut h = Sha256::new();
        h.update(b"ticketing/v1/voucher000000000000001Y");
        assert_eq!(c.hash().0, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            VoucherCode::parse("ABCD-EFGH-JKMN-PQR"),
            Err(VoucherError::WrongLength { found: 15 })
        );
        assert_eq!(
            VoucherCode::parse("ABCD-EFGH-JKMN-PQRST"),
            Err(VoucherError::WrongLength { found: 17 })
        );
        assert_eq!(
            VoucherCode::parse(""),
            Err(VoucherError::WrongLength { found: 0 })
        );
        // U is not in the alphabet; position is 1-based, separators counted.
        assert_eq!(
            VoucherCode::parse("ABCD-EFUH-JKMN-PQRS"),
            Err(VoucherError::InvalidCharacter {
                character: 'U',
                position: 8
            })
        );
        assert_eq!(
            VoucherCode::parse("ABCD-EFGH-JKMN-PQRé"),
            Err(VoucherError::InvalidCharacter {
                character: 'é',
                position: 19
            })
        );
        // A bad character is reported even when the length is also wrong.
        assert!(matches!(
            VoucherCode::parse("AB*"),
            Err(VoucherError::InvalidCharacter { character: '*', .. })
        ));
        let mut typo = code(1).to_string().into_bytes();
        typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(VoucherCode::parse(&typo), Err(VoucherError::CheckFailed));
        // Messages name what is wrong, never the code itself.
        assert_eq!(
            VoucherError::InvalidCharacter {
                character: 'U',
                position: 8
            }
            .to_string(),
            "`U` (character 8) cannot appear in a voucher code"
        );
    }

    #[test]
    fn debug_is_redacted_and_hashes_differ() {
        let c = code(7);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(c.as_str()), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert_ne!(c.hash(), code(8).hash());
        assert_eq!(c.hash(), c.clone().hash());
    }

    #[test]
    fn every_single_substitution_is_caught_exhaustively() {
        for seed in 0..50 {
            let v = values(&code(seed));
            for i in 0..CODE_LEN {
                for x in 0..32u8 {
                    if x == v[i] {
                        continue;
                    }
                    let mut w = v;
                    w[i] = x;
                    assert_eq!(
                        VoucherCode::parse(&text(&w)),
                        Err(VoucherError::CheckFailed),
                        "seed {seed}, position {i}, value {x}"
                    );
                }
            }
        }
    }

    /// What Luhn mod 32 guarantees for adjacent transpositions, measured over every pair of
    /// different symbols at every adjacent position (check character included): all are
    /// caught except swapping `0` and `Z` (values 0 and 31), which no position catches.
    #[test]
    fn adjacent_transpositions_are_caught_except_0_and_z() {
        let mut missed = std::collections::BTreeSet::new();
        let mut tried = 0;
        for i in 0..CODE_LEN - 1 {
            for a in 0..32u8 {
                for b in 0..32u8 {
                    if a == b {
                        continue;
                    }
                    let v = code_with_pair(u64::from(a) * 32 + u64::from(b), i, a, b);
                    assert!(VoucherCode::parse(&text(&v)).is_ok());
                    let mut w = v;
                    w.swap(i, i + 1);
                    tried += 1;
                    match VoucherCode::parse(&text(&w)) {
                        Err(VoucherError::CheckFailed) => {}
                        Ok(_) => {
                            missed.insert((i, char::from(symbol(a)), char::from(symbol(b))));
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            }
        }
        assert_eq!(tried, 15 * 32 * 31);
        let expected: std::collections::BTreeSet<_> = (0..CODE_LEN - 1)
            .flat_map(|i| [(i, '0', 'Z'), (i, 'Z', '0')])
            .collect();
        assert_eq!(missed, expected, "missed transpositions");
    }

    proptest! {
        #[test]
        fn any_single_substitution_is_caught(seed in any::<u64>(), i in 0..CODE_LEN, delta in 1..32u8) {
            let mut v = values(&code(seed));
            v[i] = (v[i] + delta) % 32;
            prop_assert_eq!(VoucherCode::parse(&text(&v)), Err(VoucherError::CheckFailed));
        }

        #[test]
        fn adjacent_swaps_are_caught_unless_equal_or_0_z(seed in any::<u64>(), i in 0..CODE_LEN - 1) {
            let c = code(seed);
            let v = values(&c);
            let mut w = v;
            w.swap(i, i + 1);
            let pair = (v[i].min(v[i + 1]), v[i].max(v[i + 1]));
            let result = VoucherCode::parse(&text(&w));
            if v[i] == v[i + 1] {
                prop_assert_eq!(result, Ok(c));
            } else if pair == (0, 31) {
                // The blind spot: the swap gives another valid code.
                prop_assert!(result.is_ok_and(|r| r != c));
            } else {
                prop_assert_eq!(result, Err(VoucherError::CheckFailed));
            }
        }

        #[test]
        fn random_strings_never_panic(s in any::<String>()) {
            let _ = VoucherCode::parse(&s);
        }

        #[test]
        fn near_codes_never_panic(s in "[0-9A-Za-z -]{0,40}") {
            if let Ok(c) = VoucherCode::parse(&s) {
                prop_assert_eq!(VoucherCode::parse(&c.to_string()), Ok(c));
            }
        }
    }
}
