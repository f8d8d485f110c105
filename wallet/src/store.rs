//! The browser's implementations of the wallet core's traits: [`IdbStore`] keeps
//! [`WalletData`] in IndexedDB, [`DeviceKeys`] makes holder keys with WebCrypto Ed25519
//! (non-extractable private keys stored as `CryptoKey` objects next to the tickets), falling back
//! to software keys where the browser has no WebCrypto Ed25519.

use js_sys::{Array, Object, Reflect, Uint8Array};
use ticketing_client::ClientError;
use ticketing_client::wallet::{HolderKeyRef, HolderKeys, SoftwareKeys, WalletData, WalletStore};
use ticketing_crypto::ticket::HolderPublicKey;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{CryptoKey, SubtleCrypto};

use ticketing_client::idb::{self, Db};

const DB_NAME: &str = "ticketing-wallet";
const DB_VERSION: u32 = 1;
/// `wallet`: the core's data (one JSON record); `keys`: holder keys by id.
const STORES: &[&str] = &["wallet", "keys", "meta"];
const DATA_KEY: &str = "data";

fn store_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Store(e.to_string())
}

fn key_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::HolderKey(e.to_string())
}

/// The wallet database.
#[derive(Debug, Clone)]
pub(crate) struct IdbStore {
    db: Db,
}

impl IdbStore {
    pub(crate) async fn open() -> Result<Self, ClientError> {
        Ok(Self {
            db: Db::open(DB_NAME, DB_VERSION, STORES)
                .await
                .map_err(store_err)?,
        })
    }

    /// The last manifest seen (JSON bytes), for offline starts.
    pub(crate) async fn cached_manifest(&self) -> Option<String> {
        self.db.get("meta", "manifest").await.ok()?.as_string()
    }

    pub(crate) async fn cache_manifest(&self, json: &str) -> Result<(), ClientError> {
        self.db
            .put("meta", "manifest", &JsValue::from_str(json))
            .await
            .map_err(store_err)
    }

    fn parse(value: &JsValue) -> Result<WalletData, ClientError> {
        match value.as_string() {
            None => Ok(WalletData::default()),
            Some(json) => serde_json::from_str(&json).map_err(store_err),
        }
    }
}

impl WalletStore for IdbStore {
    async fn load(&self) -> Result<WalletData, ClientError> {
        Self::parse(&self.db.get("wallet", DATA_KEY).await.map_err(store_err)?)
    }

    /// One readwrite transaction: read, change, write, wait for the commit.
    async fn update<T>(&self, change: impl FnOnce(&mut WalletData) -> T) -> Result<T, ClientError> {
        self.db
            .update_strings("wallet", &[DATA_KEY], |values| {
                let slot = values.first_mut()?;
                let mut data = match slot.as_deref() {
                    None => WalletData::default(),
                    Some(json) => serde_json::from_str(json).ok()?,
                };
                let out = change(&mut data);
                *slot = Some(serde_json::to_string(&data).ok()?);
                Some(out)
            })
            .await
            .map_err(store_err)?
            .ok_or_else(|| store_err("the stored wallet does not parse"))
    }
}

fn subtle() -> Result<SubtleCrypto, ClientError> {
    Ok(web_sys::window()
        .ok_or_else(|| key_err("no window"))?
        .crypto()
        .map_err(|e| key_err(idb::describe(&e)))?
        .subtle())
}

/// Holder keys: WebCrypto Ed25519 where the browser has it, else software keys.
#[derive(Debug, Clone)]
pub(crate) struct DeviceKeys {
    db: Db,
    webcrypto: bool,
}

impl DeviceKeys {
    /// Probe WebCrypto Ed25519 once (a throwaway key pair).
    pub(crate) async fn open(store: &IdbStore) -> Self {
        let webcrypto = generate_pair().await.is_ok();
        Self {
            db: store.db.clone(),
            webcrypto,
        }
    }
}

async fn generate_pair() -> Result<(CryptoKey, [u8; 32]), ClientError> {
    let subtle = subtle()?;
    let usages = Array::of2(&JsValue::from_str("sign"), &JsValue::from_str("verify"));
    let pair = JsFuture::from(
        subtle
            .generate_key_with_str("Ed25519", false, &usages)
            .map_err(|e| key_err(idb::describe(&e)))?,
    )
    .await
    .map_err(|e| key_err(idb::describe(&e)))?;
    let private: CryptoKey = Reflect::get(&pair, &JsValue::from_str("privateKey"))
        .map_err(|e| key_err(idb::describe(&e)))?
        .dyn_into()
        .map_err(|_| key_err("no private key"))?;
    let public: CryptoKey = Reflect::get(&pair, &JsValue::from_str("publicKey"))
        .map_err(|e| key_err(idb::describe(&e)))?
        .dyn_into()
        .map_err(|_| key_err("no public key"))?;
    let raw = JsFuture::from(
        subtle
            .export_key("raw", &public)
            .map_err(|e| key_err(idb::describe(&e)))?,
    )
    .await
    .map_err(|e| key_err(idb::describe(&e)))?;
    let bytes = Uint8Array::new(&raw).to_vec();
    let public = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| key_err("public key is not 32 bytes"))?;
    Ok((private, public))
}

impl HolderKeys for DeviceKeys {
    async fn generate<R: rand::CryptoRng>(
        &self,
        rng: &mut R,
    ) -> Result<(HolderPublicKey, HolderKeyRef), ClientError> {
        if !self.webcrypto {
            return SoftwareKeys.generate(rng).await;
        }
        let (private, public) = generate_pair().await?;
        let public = HolderPublicKey::from_bytes(&public).map_err(key_err)?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let id = hex::encode(id);
        // The CryptoKey object itself is stored (structured clone); its secret never leaves
        // the browser's key store.
        let record = Object::new();
        Reflect::set(&record, &JsValue::from_str("key"), &private)
            .map_err(|e| key_err(idb::describe(&e)))?;
        self.db.put("keys", &id, &record).await.map_err(store_err)?;
        Ok((public, HolderKeyRef::Device { device_key: id }))
    }

    async fn sign(&self, key: &HolderKeyRef, message: &[u8]) -> Result<[u8; 64], ClientError> {
        let id = match key {
            HolderKeyRef::Secret(_) => return SoftwareKeys.sign(key, message).await,
            HolderKeyRef::Device { device_key } => device_key,
        };
        let record = self.db.get("keys", id).await.map_err(store_err)?;
        let private: CryptoKey = Reflect::get(&record, &JsValue::from_str("key"))
            .map_err(|e| key_err(idb::describe(&e)))?
            .dyn_into()
            .map_err(|_| key_err("this ticket's key is missing from this browser"))?;
        let mut data = message.to_vec();
        let sig = JsFuture::from(
            subtle()?
                .sign_with_str_and_u8_array("Ed25519", &private, &mut data)
                .map_err(|e| key_err(idb::describe(&e)))?,
        )
        .await
        .map_err(|e| key_err(idb::describe(&e)))?;
        let bytes = Uint8Array::new(&sig).to_vec();
        <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| key_err("signature is not 64 bytes"))
    }

    async fn forget(&self, key: &HolderKeyRef) -> Result<(), ClientError> {
        match key {
            HolderKeyRef::Device { device_key } => {
                self.db.delete("keys", device_key).await.map_err(store_err)
            }
            HolderKeyRef::Secret(_) => Ok(()),
        }
    }

    fn device_bound(&self) -> bool {
        self.webcrypto
    }
}
