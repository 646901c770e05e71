//! The browser's own storage for the page's run: IndexedDB database `loratab`, object store `runs`,
//! one record under the key `current` holding `{ generation, meta, adapter }` — `meta` a JSON text
//! (what [`super::persist`] keeps: text, settings, loss history, model), `adapter` the adapter zip
//! with its training state, `generation` a counter raised by every write.
//!
//! IndexedDB because it works the same in Chrome, Edge, Safari and Firefox, headless or not, and a
//! write is one transaction: a reload mid-write leaves the previous record whole.
//!
//! Two tabs: each remembers the generation it last read or wrote. A write reads the record's
//! generation in the same read-write transaction (IndexedDB runs those one at a time) and refuses
//! when another tab wrote since ([`StorageError::OtherTab`]), unless it takes the record over (a
//! new run, or a Resume, in this tab). So two tabs never interleave their runs in one record.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{DomException, Event, IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransaction, IdbTransactionMode};

const DB: &str = "loratab";
const STORE: &str = "runs";
const KEY: &str = "current";
const VERSION: u32 = 1;

/// Why the run could not be kept; each is a sentence that says training is not affected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StorageError {
    #[error("This browser gives the page no storage ({0}; private browsing or blocked site data do this), so the run is not kept across reloads. Training is not affected, and the adapter still downloads.")]
    Unavailable(String),
    #[error("The browser's storage for this page is full, so the run was not saved. Training is not affected: free some space (the browser's site settings) or download the adapter.")]
    Full,
    #[error("Another loratab tab has saved its own run since this tab last did, so this tab stops saving rather than overwrite it. Training is not affected, and the adapter still downloads; “Train a new adapter” here makes this tab's run the one kept.")]
    OtherTab,
    #[error("The run could not be saved in the browser ({0}). Training is not affected, and the adapter still downloads.")]
    Failed(String),
}

fn describe(e: &JsValue) -> String {
    if let Some(d) = e.dyn_ref::<DomException>() {
        return format!("{}: {}", d.name(), d.message());
    }
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// A failed write, by the browser's error: a full quota has its own sentence.
fn write_error(e: &JsValue) -> StorageError {
    match e.dyn_ref::<DomException>() {
        Some(d) if d.name() == "QuotaExceededError" => StorageError::Full,
        _ => StorageError::Failed(describe(e)),
    }
}

/// A request's result once it succeeds, or its error.
async fn finished(req: &IdbRequest) -> Result<JsValue, JsValue> {
    let (mut ok, mut err) = (None, None);
    let promise = Promise::new(&mut |resolve, reject| {
        let r = req.clone();
        ok = Some(Closure::<dyn FnMut(Event)>::new(move |_| {
            let _ = resolve.call1(&JsValue::NULL, &r.result().unwrap_or(JsValue::UNDEFINED));
        }));
        let r = req.clone();
        err = Some(Closure::<dyn FnMut(Event)>::new(move |_| {
            let _ = reject.call1(&JsValue::NULL, &r.error().ok().flatten().map_or(JsValue::NULL, JsValue::from));
        }));
    });
    req.set_onsuccess(ok.as_ref().map(|c| c.as_ref().unchecked_ref()));
    req.set_onerror(err.as_ref().map(|c| c.as_ref().unchecked_ref()));
    let out = JsFuture::from(promise).await;
    req.set_onsuccess(None);
    req.set_onerror(None);
    out
}

/// Wait until `tx` commits (Ok) or aborts (its error; null when it was aborted on purpose).
async fn committed(tx: &IdbTransaction) -> Result<(), JsValue> {
    let (mut ok, mut err) = (None, None);
    let promise = Promise::new(&mut |resolve, reject| {
        ok = Some(Closure::<dyn FnMut(Event)>::new(move |_| {
            let _ = resolve.call0(&JsValue::NULL);
        }));
        let t = tx.clone();
        err = Some(Closure::<dyn FnMut(Event)>::new(move |_| {
            let _ = reject.call1(&JsValue::NULL, &t.error().map_or(JsValue::NULL, JsValue::from));
        }));
    });
    tx.set_oncomplete(ok.as_ref().map(|c| c.as_ref().unchecked_ref()));
    tx.set_onabort(err.as_ref().map(|c| c.as_ref().unchecked_ref()));
    let out = JsFuture::from(promise).await.map(|_| ());
    tx.set_oncomplete(None);
    tx.set_onabort(None);
    out
}

/// One record as read back.
pub struct Record {
    pub meta: String,
    pub adapter: Vec<u8>,
}

/// This tab's handle on the stored run.
pub struct Storage {
    db: IdbDatabase,
    /// The record's generation as this tab last read or wrote it (0: none).
    generation: Cell<f64>,
}

impl Storage {
    /// Open (creating on first use) the page's database.
    pub async fn open() -> Result<Storage, StorageError> {
        let unavailable = |e: JsValue| StorageError::Unavailable(describe(&e));
        let factory = web_sys::window()
            .ok_or_else(|| StorageError::Unavailable("no window".into()))?
            .indexed_db()
            .map_err(unavailable)?
            .ok_or_else(|| StorageError::Unavailable("IndexedDB is missing".into()))?;
        let req: IdbOpenDbRequest = factory.open_with_u32(DB, VERSION).map_err(unavailable)?;
        let r = req.clone();
        let upgrade = Closure::<dyn FnMut(Event)>::new(move |_| {
            if let Some(db) = r.result().ok().and_then(|d| d.dyn_into::<IdbDatabase>().ok()) {
                if !db.object_store_names().contains(STORE) {
                    let _ = db.create_object_store(STORE);
                }
            }
        });
        req.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
        let db = finished(&req).await.map_err(unavailable)?;
        req.set_onupgradeneeded(None);
        Ok(Storage { db: db.unchecked_into(), generation: Cell::new(0.0) })
    }

    fn transaction(&self, mode: IdbTransactionMode) -> Result<(IdbTransaction, web_sys::IdbObjectStore), JsValue> {
        let tx = self.db.transaction_with_str_and_mode(STORE, mode)?;
        let store = tx.object_store(STORE)?;
        Ok((tx, store))
    }

    /// The stored run, if any; this tab then writes after it (its generation is the one read).
    pub async fn load(&self) -> Result<Option<Record>, StorageError> {
        let read = async {
            let (_, store) = self.transaction(IdbTransactionMode::Readonly)?;
            finished(&store.get(&KEY.into())?).await
        };
        let value = read.await.map_err(|e| StorageError::Failed(describe(&e)))?;
        if value.is_undefined() || value.is_null() {
            return Ok(None);
        }
        let field = |name: &str| Reflect::get(&value, &name.into()).unwrap_or(JsValue::UNDEFINED);
        self.generation.set(field("generation").as_f64().unwrap_or(0.0));
        let (meta, adapter) = (field("meta").as_string(), field("adapter").dyn_into::<Uint8Array>().ok());
        match (meta, adapter) {
            (Some(meta), Some(adapter)) => Ok(Some(Record { meta, adapter: adapter.to_vec() })),
            _ => Err(StorageError::Failed("the stored run is not one this page wrote".into())),
        }
    }

    /// Write the run. Refused with [`StorageError::OtherTab`] when another tab wrote since this one
    /// last read or wrote, unless `take_over`.
    pub async fn save(&self, meta: &str, adapter: &[u8], take_over: bool) -> Result<(), StorageError> {
        let (tx, store) = self.transaction(IdbTransactionMode::Readwrite).map_err(|e| write_error(&e))?;
        let record = Object::new();
        let set = |k: &str, v: &JsValue| Reflect::set(&record, &k.into(), v).map(|_| ());
        set("meta", &meta.into()).and_then(|_| set("adapter", &Uint8Array::from(adapter).into())).map_err(|e| write_error(&e))?;
        let get = store.get(&KEY.into()).map_err(|e| write_error(&e))?;
        let mine = self.generation.get();
        // What happened inside the transaction: another tab's write, or the put refused at once.
        let conflict = Rc::new(Cell::new(false));
        let refused: Rc<RefCell<Option<JsValue>>> = Rc::default();
        let next = Rc::new(Cell::new(mine));
        // The put is issued from the get's success, inside the same transaction, so no other tab
        // can write between the check and the write.
        let on_get = {
            let (get, tx, conflict, refused, next) = (get.clone(), tx.clone(), conflict.clone(), refused.clone(), next.clone());
            Closure::<dyn FnMut(Event)>::new(move |_| {
                let current = get.result().ok().and_then(|r| Reflect::get(&r, &"generation".into()).ok()).and_then(|g| g.as_f64()).unwrap_or(0.0);
                if current != mine && !take_over {
                    conflict.set(true);
                    let _ = tx.abort();
                    return;
                }
                next.set(current + 1.0);
                let put = Reflect::set(&record, &"generation".into(), &(current + 1.0).into()).and_then(|_| store.put_with_key(&record, &KEY.into()));
                if let Err(e) = put {
                    *refused.borrow_mut() = Some(e);
                    let _ = tx.abort();
                }
            })
        };
        get.set_onsuccess(Some(on_get.as_ref().unchecked_ref()));
        let outcome = committed(&tx).await;
        get.set_onsuccess(None);
        if conflict.get() {
            return Err(StorageError::OtherTab);
        }
        if let Some(e) = refused.take() {
            return Err(write_error(&e));
        }
        outcome.map_err(|e| if e.is_null() { StorageError::Failed("the write was aborted".into()) } else { write_error(&e) })?;
        self.generation.set(next.get());
        Ok(())
    }

    /// Forget the stored run ("Start over").
    pub async fn clear(&self) -> Result<(), StorageError> {
        let (tx, store) = self.transaction(IdbTransactionMode::Readwrite).map_err(|e| write_error(&e))?;
        store.delete(&KEY.into()).map_err(|e| write_error(&e))?;
        committed(&tx).await.map_err(|e| write_error(&e))?;
        self.generation.set(0.0);
        Ok(())
    }
}
