//! Adapter + device + queue, created asynchronously the same way natively and in the browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::profile::{now_ms, Kind, Pipeline, Probe, Profile, Tally, TimeSource, QUERIES_PER_SET};
use super::GpuError;

/// What the page and the CLI show about the GPU in use.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// Largest single buffer and storage binding the device accepts (we request the adapter's own limits).
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
    pub max_workgroup_storage: u32,
}

/// A command encoder that keeps one compute pass open across consecutive dispatches. A step of
/// training records hundreds of dispatches; beginning and ending a pass around each one costs
/// validation and bookkeeping per pass (in the browser, per pass on both sides of the GPU process),
/// and within one pass every dispatch is still its own synchronization scope, so results are the
/// same. A buffer copy needs the encoder itself: it ends the open pass first, and the next dispatch
/// opens a new one.
pub struct Recorder {
    encoder: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    passes: usize,
    dispatches: usize,
    /// Set while profiling (see `gpu::profile`): every dispatch gets a pass (and timestamps) or a
    /// command buffer of its own.
    probe: Option<Probe>,
    device: wgpu::Device,
}

impl Recorder {
    pub(crate) fn new(device: &wgpu::Device, probe: Option<Probe>) -> Self {
        let encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        Self { encoder, pass: None, passes: 0, dispatches: 0, probe, device: device.clone() }
    }

    /// Record one dispatch into the open compute pass (beginning one if a copy ended the last).
    pub(crate) fn dispatch(&mut self, pipeline: &Pipeline, bind_group: &wgpu::BindGroup, groups: (u32, u32, u32)) {
        self.dispatches += 1;
        let mut timestamp_writes = None;
        match &mut self.probe {
            None => {}
            Some(Probe::Timestamps { sets, kinds }) => {
                // A pass of its own, with a timestamp at its beginning and one at its end.
                self.pass = None;
                let slot = 2 * kinds.len() as u32 % QUERIES_PER_SET;
                if slot == 0 {
                    sets.push(self.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profile"),
                        ty: wgpu::QueryType::Timestamp,
                        count: QUERIES_PER_SET,
                    }));
                }
                kinds.push(pipeline.kind);
                timestamp_writes = Some((sets.last().expect("pushed above").clone(), slot));
            }
            Some(Probe::Wall { .. }) => {}
        }
        let (encoder, passes) = (&mut self.encoder, &mut self.passes);
        let pass = self.pass.get_or_insert_with(|| {
            *passes += 1;
            let writes = timestamp_writes.as_ref().map(|(set, slot)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(*slot),
                end_of_pass_write_index: Some(*slot + 1),
            });
            // forget_lifetime: the pass lives beside its encoder in this struct; wgpu then refuses
            // other use of the encoder until the pass is dropped, which `end_pass` does first.
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: writes }).forget_lifetime()
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        match &self.probe {
            Some(Probe::Timestamps { .. }) => self.end_pass(),
            Some(Probe::Wall { .. }) => self.cut_as(Some(pipeline.kind)),
            None => {}
        }
    }

    fn end_pass(&mut self) {
        self.pass = None;
    }

    /// Wall-clock profiling: close what is recorded since the last cut (one dispatch: `Some(kind)`,
    /// or one copy: `None`) as a command buffer of its own.
    fn cut_as(&mut self, kind: Option<Kind>) {
        self.end_pass();
        if let Some(Probe::Wall { pieces }) = &mut self.probe {
            let fresh = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            pieces.push((kind, std::mem::replace(&mut self.encoder, fresh).finish()));
        }
    }

    /// `wgpu::CommandEncoder::copy_buffer_to_buffer`, after ending the open pass.
    pub fn copy_buffer_to_buffer(&mut self, source: &wgpu::Buffer, source_offset: u64, destination: &wgpu::Buffer, destination_offset: u64, size: u64) {
        self.end_pass();
        self.encoder.copy_buffer_to_buffer(source, source_offset, destination, destination_offset, size);
        self.copied();
    }

    /// `wgpu::CommandEncoder::clear_buffer` (the whole buffer to zeros), after ending the open pass.
    pub fn clear_buffer(&mut self, buffer: &wgpu::Buffer) {
        self.end_pass();
        self.encoder.clear_buffer(buffer, 0, None);
        self.copied();
    }

    /// A copy or clear was recorded: in wall-clock profiling it is a piece of its own.
    fn copied(&mut self) {
        self.cut_as(None);
    }

    /// Compute passes begun so far (a copy splits them).
    pub fn passes(&self) -> usize {
        self.passes
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// The command buffer, and the probe for profiling. With timestamps the query sets are
    /// resolved into a mappable buffer first (returned with the probe).
    pub(crate) fn finish(mut self) -> (wgpu::CommandBuffer, Option<Finished>) {
        self.end_pass();
        let finished = match self.probe.take() {
            None => None,
            Some(Probe::Timestamps { sets, kinds }) => {
                let count = 2 * kinds.len() as u64;
                let bytes = 8 * count.max(1);
                let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile resolve"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                for (i, set) in sets.iter().enumerate() {
                    let first = i as u64 * QUERIES_PER_SET as u64;
                    let n = (count - first).min(QUERIES_PER_SET as u64) as u32;
                    self.encoder.resolve_query_set(set, 0..n, &resolve, 8 * first);
                }
                if count > 0 {
                    self.encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
                }
                Some(Finished::Timestamps { staging, kinds })
            }
            // Every dispatch and copy was cut into its piece: the encoder left is empty.
            Some(Probe::Wall { pieces }) => Some(Finished::Wall { pieces }),
        };
        (self.encoder.finish(), finished)
    }
}

/// A profiled recording after `Recorder::finish`.
pub(crate) enum Finished {
    Timestamps { staging: wgpu::Buffer, kinds: Vec<Kind> },
    Wall { pieces: Vec<(Option<Kind>, wgpu::CommandBuffer)> },
}

/// One compute pipeline per (shader, entry point, override constants): built on first use, then reused.
type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

/// The uniform buffers and bind groups of a recording that is repeated (a training step), kept by
/// position: the i-th `uniform` / `bind` call of one recording reuses the i-th of the previous
/// one. A step records the same dispatches in the same order every time, so after the first step
/// no buffer or bind group is created — a uniform whose bytes changed (AdamW's step and learning
/// rate) is rewritten with `queue.write_buffer`, which lands before the next submission and after
/// the earlier ones. A call that does not match its slot (another shape) replaces it, so a stale
/// cache costs time, never correctness. It holds references to the buffers it binds: keep one per
/// owner of those buffers (a `Trainer`), not one for the whole context.
#[derive(Default)]
pub struct DispatchCache {
    uniforms: Vec<(Vec<u8>, wgpu::Buffer)>,
    binds: Vec<(wgpu::ComputePipeline, Vec<wgpu::Buffer>, wgpu::BindGroup)>,
    next_uniform: usize,
    next_bind: usize,
    /// Buffers and bind groups made (not reused) so far: what the hot path is meant to avoid.
    pub created: usize,
}

impl DispatchCache {
    pub fn new() -> std::sync::Arc<Mutex<Self>> {
        std::sync::Arc::default()
    }

    /// Replace slot `slot` of `slots` (the next one when the recording grew) with `entry`.
    fn put<T>(slots: &mut Vec<T>, slot: usize, entry: T) {
        if slot < slots.len() {
            slots[slot] = entry;
        } else {
            slots.push(entry);
        }
    }
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    adapter_info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Largest tensor we put in one buffer: the device's limit, or lower (see `set_max_binding`).
    max_binding: std::sync::atomic::AtomicU64,
    /// Workgroups per grid dimension the launchers use: the device's limit, or lower (see
    /// `set_max_workgroups_per_dim`).
    max_workgroups: std::sync::atomic::AtomicU32,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Pipeline>>,
    /// Whether the device was opened with `Features::TIMESTAMP_QUERY` (the adapter offers it).
    timestamps: bool,
    /// Whether profiling may use the timestamps (off: the wall-clock fallback, to test it).
    use_timestamps: std::sync::atomic::AtomicBool,
    /// Set between `start_profile` and `finish_profile`: what the profiled recordings took.
    profiling: Mutex<Option<(TimeSource, Tally)>>,
    /// Dispatches submitted so far by `run` / `run_cached` (the profile's counts are checked against it).
    dispatched: std::sync::atomic::AtomicUsize,
    /// Matmul variants tuned on this device (`gpu::tune`).
    pub(crate) tuner: super::tune::Tuner,
    /// Set by the device-lost callback; every entry point checks it so a lost device becomes an error, not a hang.
    lost: Arc<Mutex<Option<String>>>,
    /// Errors outside any error scope (wgpu's default handler would panic on them).
    uncaptured: Arc<Mutex<Option<GpuError>>>,
    /// Bytes of live tensors (see `tensor.rs`).
    pub(super) memory: Arc<super::tensor::MemoryCounter>,
    /// The cache of the recording in progress in `run_cached` (None: make fresh ones).
    active: Mutex<Option<Arc<Mutex<DispatchCache>>>>,
    /// `LORATAB_NO_DISPATCH_CACHE` set: `run_cached` behaves as `run` (to measure what caching saves).
    cache_off: bool,
    /// Whether matmul sends a few-row product to the matvec kernel (off: the bench's "before").
    matvec: std::sync::atomic::AtomicBool,
    /// The index of the last submission by `run` / `run_cached` (what [`Self::map_read_after`] waits for).
    last_submission: Mutex<Option<wgpu::SubmissionIndex>>,
}

impl GpuContext {
    /// Open the default GPU. Natively `WGPU_ADAPTER_NAME` / `WGPU_BACKEND` pick another one.
    pub async fn new() -> Result<Self, GpuError> {
        #[cfg(target_arch = "wasm32")]
        if !wgpu::util::is_browser_webgpu_supported().await {
            return Err(GpuError::WebGpuUnavailable);
        }
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = wgpu::util::initialize_adapter_from_env_or_default(&instance, None)
            .await
            .map_err(|e| {
                if cfg!(target_arch = "wasm32") {
                    GpuError::WebGpuUnavailable
                } else {
                    GpuError::NoAdapter(e.to_string())
                }
            })?;
        Self::from_adapter(adapter).await
    }

    async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self, GpuError> {
        // The defaults (128 MiB per binding, 256 MiB per buffer) are too small for real models:
        // ask for everything this adapter can do.
        let limits = adapter.limits();
        // Timestamp queries only serve the profile (`gpu::profile`); take them where offered.
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("loratab"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;

        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            // Also fires for `destroy()` and when the context is dropped; only this context reads the flag.
            *lost_flag.lock().unwrap() = Some(format!("{reason:?}: {message}"));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().get_or_insert(GpuError::from(e));
        }));

        Ok(Self {
            device,
            queue,
            adapter_info: adapter.get_info(),
            max_binding: std::sync::atomic::AtomicU64::new(
                limits.max_buffer_size.min(limits.max_storage_buffer_binding_size as u64),
            ),
            max_workgroups: std::sync::atomic::AtomicU32::new(limits.max_compute_workgroups_per_dimension),
            limits,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            use_timestamps: std::sync::atomic::AtomicBool::new(true),
            profiling: Mutex::new(None),
            dispatched: std::sync::atomic::AtomicUsize::new(0),
            tuner: Default::default(),
            lost,
            uncaptured,
            memory: Arc::default(),
            active: Mutex::new(None),
            last_submission: Mutex::new(None),
            cache_off: cfg!(not(target_arch = "wasm32")) && std::env::var_os("LORATAB_NO_DISPATCH_CACHE").is_some(),
            matvec: std::sync::atomic::AtomicBool::new(true),
        })
    }

    pub fn adapter(&self) -> AdapterSummary {
        let i = &self.adapter_info;
        AdapterSummary {
            name: if i.name.is_empty() { "unnamed adapter".into() } else { i.name.clone() },
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
            max_buffer_size: self.limits.max_buffer_size,
            max_storage_binding: self.limits.max_storage_buffer_binding_size,
            max_workgroup_storage: self.limits.max_compute_workgroup_storage_size,
        }
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Bytes one tensor may occupy: one buffer bound whole as one storage binding.
    pub fn max_binding(&self) -> u64 {
        self.max_binding.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lower the per-tensor cap below the device's, e.g. to WebGPU's default 128 MiB to check that
    /// a model still loads in any browser, or tiny to exercise the splitting of large weights.
    pub fn set_max_binding(&self, bytes: u64) {
        let device = self.limits.max_buffer_size.min(self.limits.max_storage_buffer_binding_size as u64);
        self.max_binding.store(bytes.min(device).max(4), std::sync::atomic::Ordering::Relaxed);
    }

    /// Workgroups per grid dimension a launcher may dispatch: the device's limit unless lowered by
    /// [`Self::set_max_workgroups_per_dim`]. Every launcher reads this, never the device limit.
    pub fn max_workgroups_per_dim(&self) -> u32 {
        self.max_workgroups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lower the per-dimension grid cap below the device's (at least 1), e.g. to 3 so that a test
    /// of a few thousand values makes every 1-D and row kernel spill into the grid's y dimension
    /// (the device's 65535 would need tens of MiB per tensor and minutes on a software GPU).
    pub fn set_max_workgroups_per_dim(&self, groups: u32) {
        let device = self.limits.max_compute_workgroups_per_dimension;
        self.max_workgroups.store(groups.clamp(1, device), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the device is a CPU implementation (Mesa lavapipe, SwiftShader), where kernels are
    /// shaped differently (invocations are SIMD lanes of a core: few fat threads beat many thin ones).
    pub fn is_cpu(&self) -> bool {
        self.adapter_info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether `gpu::matmul::encode` runs products of at most `gpu::matvec::MAX_ROWS` rows with the
    /// matvec kernel (the default) rather than the 64 × 64 tiles: off only to measure what it saves.
    pub fn matvec(&self) -> bool {
        self.matvec.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_matvec(&self, on: bool) {
        self.matvec.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Err if the device was lost or an error escaped every scope since the last check.
    pub fn check(&self) -> Result<(), GpuError> {
        if let Some(why) = self.lost.lock().unwrap().clone() {
            return Err(GpuError::DeviceLost(why));
        }
        match self.uncaptured.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// When a request fails, wait briefly for a device loss to be reported. In the browser a
    /// destroyed device can fail a pending map before its `lost` promise settles (the CI saw a
    /// readback error where the cause was the loss); natively `poll` delivers the loss first.
    async fn settle_loss(&self) {
        #[cfg(target_arch = "wasm32")]
        for _ in 0..50 {
            if self.lost.lock().unwrap().is_some() {
                return;
            }
            sleep_ms(10).await;
        }
    }

    /// Run `work` (buffer creation, encoding, submission) inside validation and out-of-memory error
    /// scopes, so that GPU-side failures come back as typed errors instead of being logged or panicking.
    pub async fn scoped<R>(
        &self,
        work: impl FnOnce() -> Result<R, GpuError>,
    ) -> Result<R, GpuError> {
        self.check()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = work();
        // Scopes pop in reverse order of their push.
        let validation = validation.pop().await;
        let oom = oom.pop().await;
        if let Some(e) = oom.or(validation) {
            // Work on a destroyed device fails validation: report the loss, the cause, if it is one.
            self.settle_loss().await;
            self.check()?;
            return Err(e.into());
        }
        self.check()?;
        result
    }

    /// The pipeline for `entry` in `shader` (WGSL source `source`) with the given override constants.
    pub(crate) fn pipeline(
        &self,
        shader: &'static str,
        source: &'static str,
        entry: &'static str,
        constants: &[(&'static str, u64)],
    ) -> Pipeline {
        let key = (shader, entry, constants.to_vec());
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = self
            .modules
            .lock()
            .unwrap()
            .entry(shader)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
            })
            .clone();
        let overrides: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &overrides,
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        });
        let pipeline = Pipeline { inner: pipeline, kind: Kind::of(shader) };
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
    }

    /// Bind `buffers` (binding 0, 1, ...) to group 0 of `pipeline`.
    pub(crate) fn bind(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        self.bind_entries(pipeline, buffers.iter().enumerate().map(|(i, &b)| (i as u32, b)))
    }

    /// Bind `(binding, buffer)` pairs to group 0 of `pipeline`: an entry point that uses only some of
    /// its shader's bindings (auto layouts hold only the bindings an entry point uses). In a
    /// `DispatchCache` the group is kept per slot and reused while the pipeline and the buffers are
    /// the same (a call site binds the same numbers to a pipeline every time).
    pub(crate) fn bind_at(&self, pipeline: &wgpu::ComputePipeline, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        self.bind_entries(pipeline, buffers.iter().copied())
    }

    /// [`Self::bind`] and [`Self::bind_at`]: a cache hit compares the buffers without collecting them.
    fn bind_entries<'b>(&self, pipeline: &wgpu::ComputePipeline, buffers: impl ExactSizeIterator<Item = (u32, &'b wgpu::Buffer)> + Clone) -> wgpu::BindGroup {
        let Some(cache) = self.active.lock().unwrap().clone() else {
            return self.make_bind(pipeline, buffers);
        };
        let mut cache = cache.lock().unwrap();
        let slot = cache.next_bind;
        cache.next_bind += 1;
        if let Some((p, bufs, group)) = cache.binds.get(slot) {
            if p == pipeline && bufs.len() == buffers.len() && bufs.iter().zip(buffers.clone()).all(|(a, (_, b))| a == b) {
                return group.clone();
            }
        }
        let group = self.make_bind(pipeline, buffers.clone());
        let entry = (pipeline.clone(), buffers.map(|(_, b)| b.clone()).collect(), group.clone());
        DispatchCache::put(&mut cache.binds, slot, entry);
        cache.created += 1;
        group
    }

    fn make_bind<'b>(&self, pipeline: &wgpu::ComputePipeline, buffers: impl Iterator<Item = (u32, &'b wgpu::Buffer)>) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers.map(|(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }).collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// A small uniform buffer holding one op's parameters.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, params: &T) -> wgpu::Buffer {
        // COPY_DST: a cached one is rewritten in place (`DispatchCache`).
        self.constant(bytemuck::bytes_of(params), wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST, "params")
    }

    /// A read-only storage buffer of data an op computes on the CPU for each dispatch (RoPE's cos/sin
    /// table): cached like a uniform, so a step that repeats makes no new buffer.
    pub(crate) fn storage_constant(&self, data: &[f32]) -> wgpu::Buffer {
        self.constant(bytemuck::cast_slice(data), wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST, "constant")
    }

    /// [`Self::storage_constant`] as a uniform (for a shader that declares the array's full length).
    pub(crate) fn uniform_constant(&self, data: &[f32]) -> wgpu::Buffer {
        self.constant(bytemuck::cast_slice(data), wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST, "constant")
    }

    fn constant(&self, bytes: &[u8], usage: wgpu::BufferUsages, label: &str) -> wgpu::Buffer {
        let make = || {
            use wgpu::util::DeviceExt;
            self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytes, usage })
        };
        let Some(cache) = self.active.lock().unwrap().clone() else {
            return make();
        };
        let mut cache = cache.lock().unwrap();
        let slot = cache.next_uniform;
        cache.next_uniform += 1;
        if let Some((old, buffer)) = cache.uniforms.get_mut(slot) {
            if old.len() == bytes.len() && buffer.usage() == usage {
                if old.as_slice() != bytes {
                    self.queue.write_buffer(buffer, 0, bytes);
                    old.copy_from_slice(bytes);
                }
                return buffer.clone();
            }
        }
        let buffer = make();
        DispatchCache::put(&mut cache.uniforms, slot, (bytes.to_vec(), buffer.clone()));
        cache.created += 1;
        buffer
    }

    /// Encode with `record`, submit, and surface any GPU error as a typed error.
    pub async fn run(
        &self,
        record: impl FnOnce(&mut Recorder) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        let finished = self.scoped(|| self.record_and_submit(record)).await?;
        self.profiled(finished).await?;
        self.tune_pending().await
    }

    /// [`GpuContext::run`] for a recording that repeats: uniforms and bind groups come from `cache`
    /// (see [`DispatchCache`]) instead of being created for every dispatch.
    pub async fn run_cached(
        &self,
        cache: &Arc<Mutex<DispatchCache>>,
        record: impl FnOnce(&mut Recorder) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        if self.cache_off {
            return self.run(record).await;
        }
        let finished = self
            .scoped(|| {
                {
                    let mut c = cache.lock().unwrap();
                    c.next_uniform = 0;
                    c.next_bind = 0;
                }
                // Set and cleared within this synchronous closure, so no other recording sees it.
                *self.active.lock().unwrap() = Some(cache.clone());
                let done = self.record_and_submit(record);
                *self.active.lock().unwrap() = None;
                done
            })
            .await?;
        self.profiled(finished).await?;
        self.tune_pending().await
    }

    /// Record with `record` and submit (while profiling with the wall clock, leave the pieces to
    /// [`Self::profiled`] to submit one at a time).
    fn record_and_submit(&self, record: impl FnOnce(&mut Recorder) -> Result<(), GpuError>) -> Result<Option<Finished>, GpuError> {
        let probe = match &*self.profiling.lock().unwrap() {
            None => None,
            Some((TimeSource::GpuTimestamps, _)) => Some(Probe::Timestamps { sets: Vec::new(), kinds: Vec::new() }),
            Some((TimeSource::WallPerDispatch, _)) => Some(Probe::Wall { pieces: Vec::new() }),
        };
        let mut encoder = Recorder::new(&self.device, probe);
        record(&mut encoder)?;
        self.dispatched.fetch_add(encoder.dispatches(), std::sync::atomic::Ordering::Relaxed);
        let (commands, finished) = encoder.finish();
        if !matches!(finished, Some(Finished::Wall { .. })) {
            let index = self.queue.submit([commands]);
            *self.last_submission.lock().unwrap() = Some(index);
        }
        Ok(finished)
    }

    /// Add a profiled recording's times to the profile in progress.
    async fn profiled(&self, finished: Option<Finished>) -> Result<(), GpuError> {
        let mut tally = Tally::default();
        match finished {
            None => return Ok(()),
            Some(Finished::Timestamps { staging, kinds }) => {
                tally.submitted(1);
                if !kinds.is_empty() {
                    let bytes = self.map_read(&staging, 16 * kinds.len() as u64).await?;
                    let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
                    let ns_per_tick = self.queue.get_timestamp_period() as f64;
                    for (i, kind) in kinds.into_iter().enumerate() {
                        // A driver may report an end before its beginning (counters of different
                        // cores): count that as 0 rather than wrap.
                        let ticks = ticks[2 * i + 1].saturating_sub(ticks[2 * i]);
                        tally.add(kind, ticks as f64 * ns_per_tick * 1e-6);
                    }
                }
            }
            Some(Finished::Wall { pieces }) => {
                for (kind, commands) in pieces {
                    let t = now_ms();
                    self.queue.submit([commands]);
                    self.wait_idle().await?;
                    let ms = now_ms() - t;
                    match kind {
                        Some(kind) => tally.add(kind, ms),
                        None => tally.add_copy(ms),
                    }
                    tally.submitted(1);
                }
                self.check()?;
            }
        }
        if let Some((_, total)) = self.profiling.lock().unwrap().as_mut() {
            total.merge(tally);
        }
        Ok(())
    }

    /// Wait until the GPU has finished everything submitted so far: a 4-byte clear submitted
    /// after it and mapped (the map completes once the queue has reached it). The same path as
    /// every read-back, so it works wherever reading does (natively `poll`, in the browser the
    /// map's promise).
    pub async fn wait_idle(&self) -> Result<(), GpuError> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("idle"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.clear_buffer(&staging, 0, None);
        self.queue.submit([encoder.finish()]);
        self.map_read(&staging, 4).await.map(|_| ())
    }

    /// Start profiling: every `run` / `run_cached` until [`Self::finish_profile`] times its
    /// dispatches (see `gpu::profile`).
    pub fn start_profile(&self) {
        let source = if self.timestamps && self.use_timestamps.load(std::sync::atomic::Ordering::Relaxed) {
            TimeSource::GpuTimestamps
        } else {
            TimeSource::WallPerDispatch
        };
        *self.profiling.lock().unwrap() = Some((source, Tally::default()));
    }

    /// The profile since [`Self::start_profile`] (None if it was not started), and stop profiling.
    pub fn finish_profile(&self) -> Option<Profile> {
        self.profiling.lock().unwrap().take().map(|(source, tally)| tally.finish(source))
    }

    /// Whether the device offers timestamp queries (GPU time in the profile).
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// Let the profile use timestamp queries (the default where offered) or not (the wall-clock
    /// fallback).
    pub fn set_profile_timestamps(&self, on: bool) {
        self.use_timestamps.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Dispatches submitted so far by `run` and `run_cached`.
    pub fn dispatches_submitted(&self) -> usize {
        self.dispatched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Copy `buffer[..bytes]` to the CPU. Natively this blocks on `poll`; in the browser it awaits
    /// the map callback, which the event loop delivers.
    pub(crate) async fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        self.read_pieces(&[(buffer, bytes)]).await
    }

    /// [`Self::read_bytes`] of several buffers (each piece a multiple of 4 bytes) with one copy
    /// submission and one map: their bytes back to back.
    pub(crate) async fn read_pieces(&self, pieces: &[(&wgpu::Buffer, u64)]) -> Result<Vec<u8>, GpuError> {
        let bytes: u64 = pieces.iter().map(|(_, b)| b).sum();
        let staging = self
            .scoped(|| {
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut encoder = self
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                let mut at = 0;
                for &(buffer, size) in pieces {
                    encoder.copy_buffer_to_buffer(buffer, 0, &staging, at, size);
                    at += size;
                }
                self.queue.submit([encoder.finish()]);
                Ok(staging)
            })
            .await?;
        self.map_read(&staging, bytes).await
    }

    /// The first `bytes` of `staging` (a MAP_READ buffer a submitted copy writes), once the GPU has
    /// written them. A caller that reads back every step keeps its own staging buffer (generation).
    pub(crate) async fn map_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        self.map_read_after(staging, bytes, None).await
    }

    /// The index of the last submission by [`Self::run`] / [`Self::run_cached`].
    pub(crate) fn last_submission(&self) -> Option<wgpu::SubmissionIndex> {
        self.last_submission.lock().unwrap().clone()
    }

    /// [`Self::map_read`] that natively waits only for submission `after` (None: for everything
    /// submitted), so that work submitted later keeps the device busy meanwhile (a decode step
    /// submitted ahead of the previous one's read-back).
    pub(crate) async fn map_read_after(&self, staging: &wgpu::Buffer, bytes: u64, after: Option<wgpu::SubmissionIndex>) -> Result<Vec<u8>, GpuError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: after, timeout: None })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = after;
        let mapped = rx.await;
        if !matches!(mapped, Ok(Ok(()))) {
            // A lost device also fails the map: report the loss, the cause, first.
            self.settle_loss().await;
            self.check()?;
        }
        mapped
            .map_err(|_| GpuError::Readback("the map request was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let data = staging
            .get_mapped_range(..bytes)
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}

/// A macrotask-long wait in the page or a worker (`setTimeout` on whichever global this runs in).
#[cfg(target_arch = "wasm32")]
async fn sleep_ms(ms: i32) {
    use wasm_bindgen::{JsCast, JsValue};
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("setTimeout"))
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&JsValue::UNDEFINED, &resolve, &JsValue::from(ms));
            }
            None => {
                let _ = resolve.call0(&JsValue::UNDEFINED);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
