//! The few browser services the components need: yielding to the event loop, the clock, fetching
//! and reading files as bytes, and saving bytes as a download. No GPU here.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

fn window() -> web_sys::Window {
    web_sys::window().expect("the app runs in a browser window")
}

/// Let the browser handle input and paint before the next GPU step (a macrotask, not a microtask,
/// so clicks such as Stop get through).
pub async fn yield_now() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
    });
    let _ = JsFuture::from(promise).await;
}

/// Milliseconds since the page loaded.
pub fn now_ms() -> f64 {
    window().performance().map_or(0.0, |p| p.now())
}

fn js_message(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// The bytes at `url` (relative to the page), or a sentence saying why not.
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let resp = JsFuture::from(window().fetch_with_str(url)).await.map_err(|e| format!("could not fetch {url}: {}", js_message(e)))?;
    let resp: web_sys::Response = resp.unchecked_into();
    if !resp.ok() {
        return Err(format!("could not fetch {url}: the server answered {} {}", resp.status(), resp.status_text()));
    }
    let buf = JsFuture::from(resp.array_buffer().map_err(js_message)?).await.map_err(js_message)?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// (name, bytes) of every file in `list`; a picked folder's files keep their relative path.
pub async fn read_files(list: &web_sys::FileList) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for i in 0..list.length() {
        let Some(file) = list.get(i) else { continue };
        let buf = JsFuture::from(file.array_buffer()).await.map_err(|e| format!("could not read {}: {}", file.name(), js_message(e)))?;
        out.push((file.name(), Uint8Array::new(&buf).to_vec()));
    }
    Ok(out)
}

/// Offer `bytes` as a download named `name` (Blob + object URL + a clicked anchor).
pub fn save_bytes(name: &str, bytes: &[u8], mime: &str) -> Result<(), String> {
    let parts = Array::of1(&Uint8Array::from(bytes));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts).map_err(js_message)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_message)?;
    let document = window().document().expect("a document");
    let a: web_sys::HtmlAnchorElement = document.create_element("a").map_err(js_message)?.unchecked_into();
    a.set_href(&url);
    a.set_download(name);
    a.style().set_property("display", "none").ok();
    let body = document.body().expect("a body");
    body.append_child(&a).map_err(js_message)?;
    a.click();
    a.remove();
    // Revoke later: the download reads the URL after this handler returns.
    let revoke = wasm_bindgen::closure::Closure::once_into_js(move || {
        let _ = web_sys::Url::revoke_object_url(&url);
    });
    let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(revoke.unchecked_ref(), 60_000);
    Ok(())
}
