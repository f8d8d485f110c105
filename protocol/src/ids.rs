use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! hex_array {
    ($(#[$doc:meta])* $name:ident, $n:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(#[serde(with = "hex::serde")] pub [u8; $n]);

        #[cfg(feature = "openapi")]
        ticketing_crypto::hex_schema!($name, stringify!($name), $n, concat!($n, " bytes"));

        impl $name {
            /// Parse from lowercase or uppercase hex.
            pub fn from_hex(s: &str) -> Result<Self, crate::ProtocolError> {
                let mut out = [0u8; $n];
                hex::decode_to_slice(s, &mut out).map_err(|e| crate::ProtocolError::Malformed {
                    what: stringify!($name),
                    reason: e.to_string(),
                })?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

hex_array!(
    /// A random 128-bit identifier (receipt ids, scan ids), chosen by its creator.
    Id16,
    16
);
hex_array!(
    /// A SHA-256 digest.
    Digest32,
    32
);

impl Id16 {
    /// A fresh random id.
    pub fn random(rng: &mut impl rand_core::CryptoRng) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        Self(b)
    }
}
