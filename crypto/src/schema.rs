//! JSON Schemas of the types that go on the wire as hex strings (feature `openapi`): the
//! services describe their HTTP APIs with them. The browser apps build without it.

use schemars::{Schema, json_schema};

use crate::backend::{G1_BYTES, G2_BYTES};
use crate::issuance::{BlindSignature, BlindedPoint, Signature};
use crate::keyset::{KeysetId, PublicKey};
use crate::ticket::{HolderPublicKey, Serial};

/// The schema of `bytes` bytes written as hexadecimal, with what they are.
pub fn hex_string(bytes: usize, description: &str) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": format!("^[0-9a-fA-F]{{{}}}$", 2 * bytes),
        "description": description,
    })
}

/// `JsonSchema` for a type written as `$bytes` hex-encoded bytes.
#[macro_export]
macro_rules! hex_schema {
    ($ty:ty, $name:expr, $bytes:expr, $description:expr) => {
        impl ::schemars::JsonSchema for $ty {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed($name)
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                $crate::schema::hex_string($bytes, $description)
            }
        }
    };
}

hex_schema!(
    KeysetId,
    "KeysetId",
    8,
    "A keyset's id: the first 8 bytes of a hash of its parameters and key."
);
hex_schema!(
    PublicKey,
    "G2PublicKey",
    G2_BYTES,
    "A BLS12-381 G2 point (compressed): a keyset's group key or a node's share of it."
);
hex_schema!(
    BlindedPoint,
    "BlindedPoint",
    G1_BYTES,
    "A blinded ticket message, a G1 point (compressed)."
);
hex_schema!(
    BlindSignature,
    "BlindSignature",
    G1_BYTES,
    "A combined signature on a blinded point, G1 (compressed)."
);
hex_schema!(
    Signature,
    "TicketSignature",
    G1_BYTES,
    "A ticket's BLS signature, G1 (compressed)."
);
hex_schema!(
    HolderPublicKey,
    "HolderPublicKey",
    HolderPublicKey::LEN,
    "A ticket's Ed25519 holder key (canonical encoding)."
);
hex_schema!(
    Serial,
    "Serial",
    32,
    "A ticket's ledger serial: a hash of its keyset id and holder key."
);
