//! A small IndexedDB layer for the browser apps' stores (wasm32 only): requests and
//! transactions as futures. Kept to what the stores need (open with an upgrade, get, put,
//! delete, and a read-change-write of several keys in one transaction), behind the cores' store
//! traits.

use js_sys::Promise;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbObjectStore, IdbRequest, IdbTransaction, IdbTransactionMode};

/// Why an IndexedDB call failed, as text for `ClientError::Store`.
pub fn describe(e: &JsValue) -> String {
    if let Some(d) = e.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", d.name(), d.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// The result of a request, once it succeeds.
pub async fn request(req: &IdbRequest) -> Result<JsValue, String> {
    let r = req.clone();
    let promise = Promise::new(&mut |resolve, reject| {
        let ok_req = r.clone();
        let ok = Closure::once_into_js(move |_: web_sys::Event| {
            let value = ok_req.result().unwrap_or(JsValue::UNDEFINED);
            let _ = resolve.call1(&JsValue::NULL, &value);
        });
        let err_req = r.clone();
        let err = Closure::once_into_js(move |_: web_sys::Event| {
            let why = err_req
                .error()
                .ok()
                .flatten()
                .map_or_else(|| JsValue::from_str("request failed"), JsValue::from);
            let _ = reject.call1(&JsValue::NULL, &why);
        });
        r.set_onsuccess(Some(ok.unchecked_ref()));
        r.set_onerror(Some(err.unchecked_ref()));
    });
    JsFuture::from(promise).await.map_err(|e| describe(&e))
}

/// Resolves when `txn` has committed (durable), fails if it aborts.
pub fn committed(txn: &IdbTransaction) -> JsFuture {
    let t = txn.clone();
    let promise = Promise::new(&mut |resolve, reject| {
        let done = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let reject2 = reject.clone();
        let failed = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = reject.call1(&JsValue::NULL, &JsValue::from_str("transaction failed"));
        });
        let aborted = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = reject2.call1(&JsValue::NULL, &JsValue::from_str("transaction aborted"));
        });
        t.set_oncomplete(Some(done.unchecked_ref()));
        t.set_onerror(Some(failed.unchecked_ref()));
        t.set_onabort(Some(aborted.unchecked_ref()));
    });
    JsFuture::from(promise)
}

/// An open database.
#[derive(Debug, Clone)]
pub struct Db(IdbDatabase);

impl Db {
    /// Open `name` at `version`, creating the object stores `stores` when needed.
    pub async fn open(
        name: &str,
        version: u32,
        stores: &'static [&'static str],
    ) -> Result<Self, String> {
        let factory = web_sys::window()
            .ok_or("no window")?
            .indexed_db()
            .map_err(|e| describe(&e))?
            .ok_or("this browser has no IndexedDB")?;
        let open = factory
            .open_with_u32(name, version)
            .map_err(|e| describe(&e))?;
        let req = open.clone();
        let upgrade = Closure::once_into_js(move |_: web_sys::IdbVersionChangeEvent| {
            if let Ok(result) = req.result()
                && let Ok(db) = result.dyn_into::<IdbDatabase>()
            {
                let names = db.object_store_names();
                for store in stores {
                    if !names.contains(store) {
                        let _ = db.create_object_store(store);
                    }
                }
            }
        });
        open.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
        let db = request(&open).await?;
        db.dyn_into::<IdbDatabase>()
            .map(Self)
            .map_err(|_| "not a database".to_owned())
    }

    /// A transaction over `store`.
    pub fn transaction(
        &self,
        store: &str,
        mode: IdbTransactionMode,
    ) -> Result<(IdbTransaction, IdbObjectStore), String> {
        let txn = self
            .0
            .transaction_with_str_and_mode(store, mode)
            .map_err(|e| describe(&e))?;
        let os = txn.object_store(store).map_err(|e| describe(&e))?;
        Ok((txn, os))
    }

    /// The value under `key`, or `undefined`.
    pub async fn get(&self, store: &str, key: &str) -> Result<JsValue, String> {
        let (_, os) = self.transaction(store, IdbTransactionMode::Readonly)?;
        let req = os.get(&JsValue::from_str(key)).map_err(|e| describe(&e))?;
        request(&req).await
    }

    /// Store `value` under `key` and wait for the commit.
    pub async fn put(&self, store: &str, key: &str, value: &JsValue) -> Result<(), String> {
        let (txn, os) = self.transaction(store, IdbTransactionMode::Readwrite)?;
        let done = committed(&txn);
        let req = os
            .put_with_key(value, &JsValue::from_str(key))
            .map_err(|e| describe(&e))?;
        request(&req).await?;
        done.await.map(|_| ()).map_err(|e| describe(&e))
    }

    /// Read the string values under `keys`, let `change` edit them (`None`: absent), write
    /// back the ones it changed, all in one readwrite transaction, and wait for the commit.
    /// IndexedDB runs readwrite transactions over a store one at a time, across tabs: no
    /// concurrent change is lost.
    pub async fn update_strings<T>(
        &self,
        store: &str,
        keys: &[&str],
        change: impl FnOnce(&mut [Option<String>]) -> T,
    ) -> Result<T, String> {
        let (txn, os) = self.transaction(store, IdbTransactionMode::Readwrite)?;
        let done = committed(&txn);
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let req = os.get(&JsValue::from_str(key)).map_err(|e| describe(&e))?;
            values.push(request(&req).await?.as_string());
        }
        let before = values.clone();
        let out = change(&mut values);
        for ((key, new), old) in keys.iter().zip(&values).zip(&before) {
            if new == old {
                continue;
            }
            let req = match new {
                Some(v) => os.put_with_key(&JsValue::from_str(v), &JsValue::from_str(key)),
                None => os.delete(&JsValue::from_str(key)),
            }
            .map_err(|e| describe(&e))?;
            request(&req).await?;
        }
        done.await.map_err(|e| describe(&e))?;
        Ok(out)
    }

    /// Delete `key` and wait for the commit.
    pub async fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        let (txn, os) = self.transaction(store, IdbTransactionMode::Readwrite)?;
        let done = committed(&txn);
        let req = os
            .delete(&JsValue::from_str(key))
            .map_err(|e| describe(&e))?;
        request(&req).await?;
        done.await.map(|_| ()).map_err(|e| describe(&e))
    }
}
