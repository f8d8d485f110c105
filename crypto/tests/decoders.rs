//! Every decoder fed arbitrary bytes returns a typed error or a value; it never panics.

use proptest::prelude::*;
use ticketing_crypto::issuance::{BlindedPoint, BlindingFactor, PartialSignature, Signature};
use ticketing_crypto::keyset::{
    FeldmanCommitments, KeysetId, PublicKey, SecretKeyShare, ShareIndex,
};
use ticketing_crypto::presentation::{self, Presentation};
use ticketing_crypto::ticket::{HolderPublicKey, HolderSecret, Ticket};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn point_decoders(b in bytes(120)) {
        let _ = BlindedPoint::from_bytes(&b);
        let _ = Signature::from_bytes(&b);
        let _ = PartialSignature::from_bytes(ShareIndex::new(1).unwrap(), &b);
        let _ = PublicKey::from_bytes(&b);
    }

    #[test]
    fn exact_length_points_are_mostly_refused(b in proptest::array::uniform32(any::<u8>()), c in proptest::array::uniform16(any::<u8>())) {
        // 48 random bytes are almost never a valid subgroup point; when refused, the error is typed.
        let mut p = b.to_vec();
        p.extend_from_slice(&c);
        if let Err(e) = BlindedPoint::from_bytes(&p) {
            let typed = matches!(e, ticketing_crypto::CryptoError::InvalidPoint { .. });
            prop_assert!(typed, "untyped error {:?}", e);
        }
    }

    #[test]
    fn scalar_and_key_decoders(b in bytes(70), i in 1u16..) {
        let _ = SecretKeyShare::from_bytes(ShareIndex::new(i).unwrap(), &b);
        let _ = BlindingFactor::from_bytes(&b);
        let _ = HolderPublicKey::from_bytes(&b);
        let _ = HolderSecret::from_bytes(&b);
        let _ = ShareIndex::new(i);
    }

    #[test]
    fn presentation_decoders(b in bytes(400), s in ".{0,300}") {
        let _ = Presentation::decode(&b);
        let _ = Presentation::from_text(&s);
        let _ = KeysetId::from_hex(&s);
        let _ = serde_json::from_str::<Ticket>(&s);
    }

    #[test]
    fn well_framed_presentations_with_random_fields(b in proptest::collection::vec(any::<u8>(), presentation::LEN - 1)) {
        // Right version and length, random contents: reaches every field decoder.
        let mut p = vec![presentation::VERSION];
        p.extend_from_slice(&b);
        prop_assert!(Presentation::decode(&p).is_err());
    }

    #[test]
    fn commitment_decoders(n in 0usize..4, fill in any::<u8>()) {
        let points = vec![[fill; 96]; n];
        prop_assert!(FeldmanCommitments::from_bytes(&points).is_err());
    }
}
