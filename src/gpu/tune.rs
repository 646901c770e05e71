//! Matmul kernels tuned on the device: `shaders/matmul.wgsl` has override constants for its
//! threads (TX × TY) and register block (BM rows × 4 columns per thread); [`VARIANTS`] lists the
//! combinations tried, one WGSL source for all. With tuning on ([`GpuContext::set_tuning`]), the
//! first product of each shape class ([`class`]: B's format, the layout, batched or not, and M, N,
//! K rounded up to powers of two) runs the default variant and is queued; after that recording is
//! submitted, every variant is timed on a product of the class's first shape (N, then M, cut so
//! that one product is a few tens of MFLOP), its result compared with the default's, and the
//! fastest correct one is used for the class from then on. The default is always among those
//! timed, so a class never gets a variant measured slower than the default.
//!
//! The choices are kept per device (adapter name, driver, backend) natively in
//! `$LORATAB_CACHE_DIR` (else `$XDG_CACHE_HOME/loratab`, else `~/.cache/loratab`)
//! `/matmul-tuning.json`, and in the page in `localStorage` (`loratab-matmul-tuning`). A store that
//! cannot be read or parsed is ignored with a warning and rewritten.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::profile::now_ms;
use super::{GpuContext, GpuError, GpuTensor};
use crate::model::{HostTensor, Weight, WeightFormat};
use crate::ops::Matmul;

/// One matmul variant: TX × TY threads, each a BM × 4 block of C; with `vec4`, the operands are
/// staged four values a load where the shape allows (the shader's `main_vec4`, see [`Variant::entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub tx: u32,
    pub ty: u32,
    pub bm: u32,
    pub vec4: bool,
}

impl Variant {
    /// Rows and columns of C per workgroup.
    pub fn tile(&self) -> (usize, usize) {
        ((self.bm * self.ty) as usize, (4 * self.tx) as usize)
    }

    /// The override constants of matmul.wgsl (empty for the default: its values are the shader's).
    pub(crate) fn constants(&self) -> Vec<(&'static str, u64)> {
        if *self == VARIANTS[DEFAULT] {
            return Vec::new();
        }
        vec![("TX", self.tx as u64), ("TY", self.ty as u64), ("BM", self.bm as u64)]
    }

    /// matmul.wgsl's entry point for `spec`: `main_vec4` when this variant reads four values a load
    /// and every group of four consecutive values it would read lies wholly inside its operand
    /// (A along K for [M, K] or along M for [K, M]; B along N for [K, N] or along K for [N, K]),
    /// else `main`. Both add the same products in the same order: the results are bit-identical.
    pub fn entry(&self, spec: &Matmul) -> &'static str {
        let a = if spec.layout.trans_a() { spec.m.is_multiple_of(4) } else { spec.k.is_multiple_of(4) && spec.lda.is_multiple_of(4) };
        if self.vec4 && a && super::matvec::aligned(spec) && spec.a_offset.is_multiple_of(4) { "main_vec4" } else { "main" }
    }
}

/// The variants tried; [`DEFAULT`] is the one used untuned.
pub const VARIANTS: [Variant; 7] = [
    Variant { name: "64x64 t16x16 b4x4", tx: 16, ty: 16, bm: 4, vec4: false },
    Variant { name: "32x32 t8x8 b4x4", tx: 8, ty: 8, bm: 4, vec4: false },
    Variant { name: "32x64 t16x8 b4x4", tx: 16, ty: 8, bm: 4, vec4: false },
    Variant { name: "64x64 t16x8 b8x4", tx: 16, ty: 8, bm: 8, vec4: false },
    Variant { name: "128x64 t16x16 b8x4", tx: 16, ty: 16, bm: 8, vec4: false },
    Variant { name: "64x64 t16x16 b4x4 vec4", tx: 16, ty: 16, bm: 4, vec4: true },
    Variant { name: "128x64 t16x16 b8x4 vec4", tx: 16, ty: 16, bm: 8, vec4: true },
];
pub const DEFAULT: usize = 0;

/// The shape class of a product: what a tuned choice is kept for.
pub fn class(spec: &Matmul, format: WeightFormat) -> String {
    let bucket = |x: usize| x.next_power_of_two().clamp(16, 4096);
    format!("{format} {:?} m{} n{} k{}{}", spec.layout, bucket(spec.m), bucket(spec.n), bucket(spec.k), if spec.batch > 1 { " batched" } else { "" })
}

/// One class's measurement: GFLOP/s of each variant (None: not correct or failed), the choice.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tuned {
    pub class: String,
    /// The product that was timed (the class's first shape, cut to size).
    pub timed: (usize, usize, usize),
    pub gflops: Vec<Option<f64>>,
    pub chosen: usize,
}

/// A shape class's variant as the context uses it now, with the GFLOP/s the tuner measured for
/// it and for the default when that happened on this context (None: the choice came from the store).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Choice {
    pub class: String,
    pub variant: &'static str,
    pub gflops: Option<f64>,
    pub default_gflops: Option<f64>,
}

/// The context's tuning state.
#[derive(Default)]
pub(crate) struct Tuner {
    enabled: AtomicBool,
    busy: AtomicBool,
    forced: Mutex<Option<usize>>,
    choices: Mutex<HashMap<String, usize>>,
    pending: Mutex<Vec<(String, Matmul, WeightFormat)>>,
    measured: Mutex<Vec<Tuned>>,
}

impl Tuner {
    /// The variant for `spec` now; an unknown class is queued for tuning when tuning is on.
    pub(crate) fn variant(&self, spec: &Matmul, format: WeightFormat) -> usize {
        if let Some(v) = *self.forced.lock().unwrap() {
            return v;
        }
        if !self.enabled.load(Ordering::Relaxed) {
            return DEFAULT;
        }
        let class = class(spec, format);
        if let Some(&v) = self.choices.lock().unwrap().get(&class) {
            return v;
        }
        let mut pending = self.pending.lock().unwrap();
        if !pending.iter().any(|(c, ..)| *c == class) {
            pending.push((class, *spec, format));
        }
        DEFAULT
    }
}

impl GpuContext {
    /// Turn device tuning of the matmul on (loading the stored choices for this device) or off.
    pub fn set_tuning(&self, on: bool) {
        if on {
            let stored = load_store();
            let device = self.device_key();
            if let Some(classes) = stored.get(&device) {
                let mut choices = self.tuner.choices.lock().unwrap();
                for (class, name) in classes {
                    if let Some(i) = VARIANTS.iter().position(|v| v.name == name) {
                        choices.entry(class.clone()).or_insert(i);
                    }
                }
            }
        }
        self.tuner.enabled.store(on, Ordering::Relaxed);
    }

    /// Run every matmul with variant `v` of [`VARIANTS`] (tests, the bench's "default" figures), or
    /// as tuned (None).
    pub fn set_matmul_variant(&self, v: Option<usize>) {
        *self.tuner.forced.lock().unwrap() = v.map(|v| v.min(VARIANTS.len() - 1));
    }

    /// The variant chosen for `spec`'s class (the default when not tuned).
    pub fn matmul_variant(&self, spec: &Matmul, format: WeightFormat) -> usize {
        self.tuner.choices.lock().unwrap().get(&class(spec, format)).copied().unwrap_or(DEFAULT)
    }

    /// What tuning measured so far on this context.
    pub fn tuned(&self) -> Vec<Tuned> {
        self.tuner.measured.lock().unwrap().clone()
    }

    /// Whether tuning is on.
    pub fn tuning(&self) -> bool {
        self.tuner.enabled.load(Ordering::Relaxed)
    }

    /// Whether the store holds choices for this device (it was tuned before, here or in an earlier
    /// session).
    pub fn has_stored_tuning(&self) -> bool {
        load_store().get(&self.device_key()).is_some_and(|classes| !classes.is_empty())
    }

    /// Every class with a chosen variant, by class name.
    pub fn choices(&self) -> Vec<Choice> {
        let measured = self.tuned();
        let mut out: Vec<Choice> = self
            .tuner
            .choices
            .lock()
            .unwrap()
            .iter()
            .map(|(class, &v)| {
                let t = measured.iter().rev().find(|t| t.class == *class);
                Choice {
                    class: class.clone(),
                    variant: VARIANTS[v].name,
                    gflops: t.and_then(|t| t.gflops[v]),
                    default_gflops: t.and_then(|t| t.gflops[DEFAULT]),
                }
            })
            .collect();
        out.sort_by(|a, b| a.class.cmp(&b.class));
        out
    }

    fn device_key(&self) -> String {
        let a = self.adapter();
        format!("{} | {} | {}", a.name, a.driver, a.backend)
    }

    /// Tune `spec`'s class now unless it is known (the bench asks for its shapes directly).
    pub async fn tune(&self, spec: &Matmul, format: WeightFormat) -> Result<usize, GpuError> {
        let class = class(spec, format);
        if let Some(&v) = self.tuner.choices.lock().unwrap().get(&class) {
            return Ok(v);
        }
        self.tuner.pending.lock().unwrap().push((class, *spec, format));
        self.tune_pending().await?;
        Ok(self.matmul_variant(spec, format))
    }

    /// Time the queued classes (see the module's text) and store the choices.
    pub(crate) async fn tune_pending(&self) -> Result<(), GpuError> {
        if self.tuner.pending.lock().unwrap().is_empty() || self.tuner.busy.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let pending = std::mem::take(&mut *self.tuner.pending.lock().unwrap());
        let mut result = Ok(());
        for (class, spec, format) in pending {
            match self.tune_class(&class, &spec, format).await {
                Ok(t) => {
                    self.tuner.choices.lock().unwrap().insert(class, t.chosen);
                    self.tuner.measured.lock().unwrap().push(t);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let mut stored = load_store();
            let mine = stored.entry(self.device_key()).or_default();
            for (class, &v) in self.tuner.choices.lock().unwrap().iter() {
                mine.insert(class.clone(), VARIANTS[v].name.to_string());
            }
            save_store(&stored);
        }
        self.tuner.busy.store(false, Ordering::Relaxed);
        result
    }

    async fn tune_class(&self, class: &str, spec: &Matmul, format: WeightFormat) -> Result<Tuned, GpuError> {
        // A plain product of the class's shape, cut to tens of MFLOP along N, then M, but never
        // below the largest tile's rows and four of its column widths, in whole tiles of every
        // variant: a cut to one column tile and an odd row count (64 × 85 for K = 3072) timed
        // padding and too few workgroups, and picked 32-row tiles that were 0.8× the default on the
        // whole product.
        const FLOPS: usize = 1 << 25;
        let (rows, cols) = VARIANTS.iter().map(Variant::tile).fold((1, 1), |(r, c), (m, n)| (r.max(m), c.max(n)));
        let per_row = 2 * spec.k * spec.batch.max(1);
        let n = spec.n.min((FLOPS / (per_row * spec.m).max(1)).max(4 * cols).next_multiple_of(cols));
        let m = spec.m.min((FLOPS / (per_row * n).max(1)).max(rows).next_multiple_of(rows));
        let mut s = Matmul::new(m, n, spec.k, spec.layout);
        if spec.batch > 1 {
            s = s.batched(spec.batch, spec.shared_b);
        }
        let mut rng = crate::rng::Rng::new(17);
        let b_shape = if s.layout.trans_b() { [s.n, s.k] } else { [s.k, s.n] };
        let f32s = |rng: &mut crate::rng::Rng, n: usize| Weight::from_f32(&HostTensor::new(rng.vec(n), vec![n]), WeightFormat::F32, "tune");
        let w = |e: crate::model::ModelError| GpuError::Internal(format!("tuning {class}: {e}"));
        let a = self.upload_uncounted(&f32s(&mut rng, s.a_len()).map_err(w)?).await?;
        let b = if s.batch > 1 && !s.shared_b {
            self.upload_uncounted(&f32s(&mut rng, s.b_len()).map_err(w)?).await?
        } else {
            self.upload_uncounted(&Weight::from_f32(&HostTensor::new(rng.vec(s.k * s.n), b_shape.to_vec()), format, "tune").map_err(w)?).await?
        };
        let c = self.upload_uncounted(&f32s(&mut rng, s.c_len()).map_err(w)?).await?;
        let mut reference: Option<Vec<f32>> = None;
        let mut gflops = Vec::new();
        for v in 0..VARIANTS.len() {
            // The first run compiles the pipeline and gives the result to check.
            let once = self.time_variant(&s, v, &a, &b, &c, 1).await?;
            let out = self.read(&c).await?;
            let correct = match &reference {
                None => true,
                Some(want) => {
                    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
                    out.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-5 * scale) && out.len() == want.len()
                }
            };
            if reference.is_none() {
                reference = Some(out);
            }
            if !correct {
                log::warn!("matmul variant {} gave wrong results for {class}; not used", VARIANTS[v].name);
                gflops.push(None);
                continue;
            }
            let reps = ((20.0 / once.max(0.01)) as usize).clamp(1, 50);
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                best = best.min(self.time_variant(&s, v, &a, &b, &c, reps).await? / reps as f64);
            }
            gflops.push(Some(s.flops() / (best * 1e-3) / 1e9));
        }
        let chosen = (0..VARIANTS.len()).filter(|&v| gflops[v].is_some()).max_by(|&x, &y| gflops[x].unwrap().total_cmp(&gflops[y].unwrap())).unwrap_or(DEFAULT);
        Ok(Tuned { class: class.to_string(), timed: (s.m, s.n, s.k), gflops, chosen })
    }

    /// Milliseconds of `reps` back-to-back products with variant `v` (one submission, GPU drained).
    async fn time_variant(&self, s: &Matmul, v: usize, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor, reps: usize) -> Result<f64, GpuError> {
        self.wait_idle().await?;
        let t = now_ms();
        self.scoped(|| {
            let mut enc = super::Recorder::new(&self.device, None);
            for _ in 0..reps {
                super::matmul::encode_with(self, &mut enc, s, super::matmul::Operands { a, b, bias: None, c }, super::matmul::Kernel::Tiled(v))?;
            }
            self.queue.submit([enc.finish().0]);
            Ok(())
        })
        .await?;
        self.wait_idle().await?;
        Ok(now_ms() - t)
    }
}

/// Whether a command-line run should tune: unless `LORATAB_NO_TUNE` is set.
#[cfg(not(target_arch = "wasm32"))]
pub fn wanted() -> bool {
    std::env::var_os("LORATAB_NO_TUNE").is_none()
}

/// device → class → variant name.
type Store = BTreeMap<String, BTreeMap<String, String>>;
const STORE_VERSION: u32 = 1;

fn parse_store(text: &str) -> Result<Store, String> {
    #[derive(serde::Deserialize)]
    struct File {
        version: u32,
        devices: Store,
    }
    let f: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if f.version != STORE_VERSION {
        return Err(format!("version {} (this loratab writes {STORE_VERSION})", f.version));
    }
    Ok(f.devices)
}

fn store_text(store: &Store) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "version": STORE_VERSION, "devices": store })).expect("strings serialize")
}

/// The stored choices; nothing (with a warning) when the store is unreadable.
fn load_store() -> Store {
    match read_raw() {
        None => Store::new(),
        Some(text) => parse_store(&text).unwrap_or_else(|e| {
            warn(&format!("the matmul tuning cache ({}) is not usable ({e}); it is ignored and will be rewritten", store_place()));
            Store::new()
        }),
    }
}

fn save_store(store: &Store) {
    if let Err(e) = write_raw(&store_text(store)) {
        warn(&format!("could not save the matmul tuning cache ({}): {e}", store_place()));
    }
}

fn warn(message: &str) {
    log::warn!("{message}");
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("warning: {message}");
}

#[cfg(not(target_arch = "wasm32"))]
pub fn store_path() -> Option<std::path::PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let dir = env("LORATAB_CACHE_DIR").or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("loratab"))).or_else(|| env("HOME").map(|h| h.join(".cache").join("loratab")))?;
    Some(dir.join("matmul-tuning.json"))
}

#[cfg(not(target_arch = "wasm32"))]
fn store_place() -> String {
    store_path().map_or_else(|| "no cache directory".into(), |p| p.display().to_string())
}

#[cfg(not(target_arch = "wasm32"))]
fn read_raw() -> Option<String> {
    std::fs::read_to_string(store_path()?).ok()
}

#[cfg(not(target_arch = "wasm32"))]
fn write_raw(text: &str) -> Result<(), String> {
    let path = store_path().ok_or("no cache directory (set LORATAB_CACHE_DIR)")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    // Written aside, then renamed: a crash never leaves half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
}

#[cfg(target_arch = "wasm32")]
const STORAGE_KEY: &str = "loratab-matmul-tuning";

#[cfg(target_arch = "wasm32")]
fn store_place() -> String {
    format!("localStorage {STORAGE_KEY}")
}

#[cfg(target_arch = "wasm32")]
fn local_storage() -> Option<wasm_bindgen::JsValue> {
    let s = js_sys::Reflect::get(&js_sys::global(), &"localStorage".into()).ok()?;
    (!s.is_undefined() && !s.is_null()).then_some(s)
}

#[cfg(target_arch = "wasm32")]
fn call(method: &str, args: &[&str]) -> Result<wasm_bindgen::JsValue, String> {
    use wasm_bindgen::JsCast;
    let storage = local_storage().ok_or("no localStorage")?;
    let f: js_sys::Function = js_sys::Reflect::get(&storage, &method.into()).map_err(|e| format!("{e:?}"))?.dyn_into().map_err(|e| format!("{e:?}"))?;
    let args: js_sys::Array = args.iter().map(|a| wasm_bindgen::JsValue::from_str(a)).collect();
    f.apply(&storage, &args).map_err(|e| format!("{e:?}"))
}

#[cfg(target_arch = "wasm32")]
fn read_raw() -> Option<String> {
    call("getItem", &[STORAGE_KEY]).ok()?.as_string()
}

#[cfg(target_arch = "wasm32")]
fn write_raw(text: &str) -> Result<(), String> {
    call("setItem", &[STORAGE_KEY, text]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_fit_the_shader() {
        assert_eq!(VARIANTS[DEFAULT].tile(), (64, 64));
        for v in VARIANTS {
            let (tm, tn) = v.tile();
            // Staging loops stride by the thread count; the workgroup arrays are 16 × tile / 4 vec4s.
            assert!(v.bm % 4 == 0 && v.bm <= 8 && v.tx * v.ty <= 256 && (tm + tn) * 16 * 4 <= 16384, "{v:?}");
        }
    }

    #[test]
    fn store_round_trips_and_bad_text_is_an_error() {
        let mut s = Store::new();
        s.entry("gpu | driver | Vulkan".into()).or_default().insert("f32 XWt m128 n1024 k256".into(), VARIANTS[2].name.into());
        assert_eq!(parse_store(&store_text(&s)).unwrap(), s);
        assert!(parse_store("{not json").is_err());
        assert!(parse_store(r#"{"version": 99, "devices": {}}"#).unwrap_err().contains("version 99"));
    }

    #[test]
    fn classes_round_up_to_powers_of_two() {
        let spec = Matmul::new(100, 576, 1536, crate::ops::Layout::XWt);
        assert_eq!(class(&spec, WeightFormat::Q4_1), "q4_1 XWt m128 n1024 k2048");
        assert_eq!(class(&spec.batched(2, true), WeightFormat::F32), "f32 XWt m128 n1024 k2048 batched");
    }
}
