//! The few browser services the components need: yielding to the event loop, the clock, fetching
//! and reading files (picked, or dropped folders too) as bytes, and saving bytes as a download. No GPU here.

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

/// The bytes at `url` read chunk by chunk, `progress(bytes so far, total if the server says)` after
/// each; Ok(None) when the file is not there (404, or a server's index.html in its place, as
/// single-page servers answer any unknown path).
pub async fn fetch_with_progress(url: &str, progress: impl Fn(u64, Option<u64>)) -> Result<Option<Vec<u8>>, String> {
    let fail = |e: JsValue| format!("could not fetch {url}: {}", js_message(e));
    let resp: web_sys::Response = JsFuture::from(window().fetch_with_str(url)).await.map_err(fail)?.unchecked_into();
    let headers = js_sys::Reflect::get(&resp, &"headers".into()).map_err(fail)?;
    let header = |name: &str| call(&headers, "get", &[&name.into()]).ok().and_then(|v| v.as_string());
    if resp.status() == 404 || header("content-type").is_some_and(|t| t.starts_with("text/html")) {
        return Ok(None);
    }
    if !resp.ok() {
        return Err(format!("could not fetch {url}: the server answered {} {}", resp.status(), resp.status_text()));
    }
    let total = header("content-length").and_then(|n| n.parse().ok());
    // Response.body's reader (by name: these web-sys types need features the app has no other use for).
    let body = js_sys::Reflect::get(&resp, &"body".into()).map_err(fail)?;
    let reader = call(&body, "getReader", &[]).map_err(fail)?;
    let mut out = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let promise: js_sys::Promise = call(&reader, "read", &[]).map_err(fail)?.unchecked_into();
        let chunk = JsFuture::from(promise).await.map_err(fail)?;
        if js_sys::Reflect::get(&chunk, &"done".into()).map_err(fail)?.as_bool() == Some(true) {
            break;
        }
        let value: Uint8Array = js_sys::Reflect::get(&chunk, &"value".into()).map_err(fail)?.unchecked_into();
        let at = out.len();
        out.resize(at + value.length() as usize, 0);
        value.copy_to(&mut out[at..]);
        progress(out.len() as u64, total);
    }
    Ok(Some(out))
}

/// Whether a chosen or dropped file can matter: a model or an adapter is JSON, safetensors or a zip
/// of them, or one GGUF file. Anything else in a Hugging Face folder (PyTorch `.bin` weights, `.git`, README) is not
/// read at all, so picking a folder that also holds gigabytes of other formats costs nothing.
pub fn wanted(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    !path.split('/').any(|part| part.starts_with('.') && part.len() > 1)
        && [".json", ".safetensors", ".zip", ".gguf"].iter().any(|ext| name.ends_with(ext))
}

/// A file's path within a picked folder (`webkitRelativePath`), else its name.
fn path_of(file: &web_sys::File) -> String {
    js_sys::Reflect::get(file, &"webkitRelativePath".into())
        .ok()
        .and_then(|p| p.as_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| file.name())
}

async fn read_blob(file: &web_sys::File, path: &str) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(file.array_buffer()).await.map_err(|e| format!("could not read {path}: {}", js_message(e)))?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// A picked or dropped file as text (a JSON Lines file of examples); bytes that are not UTF-8
/// become U+FFFD, so the bad lines are reported rather than the whole file refused.
pub async fn read_text(file: &web_sys::File) -> Result<String, String> {
    let name = file.name();
    Ok(String::from_utf8_lossy(&read_blob(file, &name).await?).into_owned())
}

/// Files the user chose or dropped: the [`wanted`] ones read, the paths of the rest kept so a
/// message can say what was there (a folder of PyTorch `.bin` weights, say).
#[derive(Default)]
pub struct Chosen {
    pub files: Vec<(String, Vec<u8>)>,
    pub skipped: Vec<String>,
}

impl Chosen {
    async fn add(&mut self, file: &web_sys::File, path: String) -> Result<(), String> {
        if wanted(&path) {
            let bytes = read_blob(file, &path).await?;
            self.files.push((path, bytes));
        } else {
            self.skipped.push(path);
        }
        Ok(())
    }
}

/// Every file in `list`; a picked folder's files keep their relative path (`folder/config.json`),
/// which names the model.
pub async fn read_files(list: &web_sys::FileList) -> Result<Chosen, String> {
    let mut out = Chosen::default();
    for i in 0..list.length() {
        let Some(file) = list.get(i) else { continue };
        out.add(&file, path_of(&file)).await?;
    }
    Ok(out)
}

/// What was dropped, taken during the drop event (the browser empties the DataTransfer after it):
/// file-system entries when the browser gives them, which is the only way to read a dropped
/// folder (`files` lists a folder as one unreadable item), else the plain file list.
pub enum Dropped {
    Entries(Vec<JsValue>),
    Files(web_sys::FileList),
}

pub fn dropped(data: &web_sys::DataTransfer) -> Option<Dropped> {
    let items = data.items();
    let mut entries = Vec::new();
    for i in 0..items.length() {
        let Some(item) = items.get(i) else { continue };
        if item.kind() != "file" {
            continue;
        }
        match call(&item, "webkitGetAsEntry", &[]) {
            Ok(entry) if entry.is_object() => entries.push(entry),
            // Synthetic drops (and old browsers) have no entries: use the file list.
            _ => return data.files().map(Dropped::Files),
        }
    }
    if entries.is_empty() { data.files().map(Dropped::Files) } else { Some(Dropped::Entries(entries)) }
}

fn call(target: &JsValue, method: &str, args: &[&JsValue]) -> Result<JsValue, JsValue> {
    let f: js_sys::Function = js_sys::Reflect::get(target, &method.into())?.dyn_into()?;
    js_sys::Reflect::apply(&f, target, &args.iter().copied().collect::<Array>())
}

/// Call a callback-style method (`method(onSuccess, onError)`) and await its result.
async fn with_callbacks(target: &JsValue, method: &str) -> Result<JsValue, JsValue> {
    let mut thrown = None;
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        thrown = call(target, method, &[&resolve, &reject]).err();
    });
    if let Some(e) = thrown {
        return Err(e);
    }
    JsFuture::from(promise).await
}

/// Every file under the dropped entries, folders walked (hidden ones, such as `.git`, are not
/// entered); paths keep the dropped folder's name (`folder/config.json`).
pub async fn read_dropped(dropped: Dropped) -> Result<Chosen, String> {
    let mut stack = match dropped {
        Dropped::Files(list) => return read_files(&list).await,
        Dropped::Entries(entries) => entries,
    };
    let mut out = Chosen::default();
    while let Some(entry) = stack.pop() {
        let field = |name: &str| js_sys::Reflect::get(&entry, &name.into()).ok();
        let path = field("fullPath").and_then(|p| p.as_string()).unwrap_or_default().trim_start_matches('/').to_string();
        let fail = |e: JsValue| format!("could not read {path}: {}", js_message(e));
        if field("isDirectory").and_then(|d| d.as_bool()) == Some(true) {
            if path.rsplit('/').next().is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            let reader = call(&entry, "createReader", &[]).map_err(fail)?;
            // readEntries returns the folder in batches; an empty one ends it.
            loop {
                let batch: Array = with_callbacks(&reader, "readEntries").await.map_err(fail)?.unchecked_into();
                if batch.length() == 0 {
                    break;
                }
                stack.extend(batch.iter());
            }
        } else {
            let file: web_sys::File = with_callbacks(&entry, "file").await.map_err(fail)?.unchecked_into();
            out.add(&file, path).await?;
        }
    }
    out.files.sort_by(|a, b| a.0.cmp(&b.0));
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
