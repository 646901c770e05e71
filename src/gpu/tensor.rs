//! `GpuTensor`: a storage buffer and its row-major shape: f32 values, or a frozen weight packed in
//! a [`WeightFormat`] that only the kernels reading weights (matmul's B, the embedding) decode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{GpuContext, GpuError};
use crate::model::{Weight, WeightFormat};

/// Clones share the buffer (wgpu buffers are reference counted) and its [`Allocation`], so the
/// bytes are counted once and released when the last clone goes.
#[derive(Clone)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
    /// F32 for everything but frozen weights uploaded with [`GpuContext::upload_weight`].
    pub format: WeightFormat,
    _alloc: Arc<Allocation>,
}

/// Live and peak bytes of every tensor a [`GpuContext`] has allocated: the measured side of the
/// training memory budget (`train::memory`). Transient uniform and staging buffers are not counted.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
    /// Live tensors (buffers with their own allocation; clones share one).
    tensors: AtomicU64,
}

impl MemoryCounter {
    /// Tensors live now: with [`MemoryCounter::live`], what a soak test watches for leaks.
    pub fn tensors(&self) -> u64 {
        self.tensors.load(Ordering::Relaxed)
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// The most bytes live at once since the last [`MemoryCounter::reset_peak`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }
}

struct Allocation {
    bytes: u64,
    counter: Arc<MemoryCounter>,
}

impl Allocation {
    fn new(counter: &Arc<MemoryCounter>, bytes: u64) -> Arc<Self> {
        let live = counter.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        counter.peak.fetch_max(live, Ordering::Relaxed);
        counter.tensors.fetch_add(1, Ordering::Relaxed);
        Arc::new(Self { bytes, counter: counter.clone() })
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.counter.live.fetch_sub(self.bytes, Ordering::Relaxed);
        self.counter.tensors.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GpuTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.format.bytes(self.len())
    }
}

impl GpuContext {
    fn check_size(&self, what: &str, bytes: u64) -> Result<(), GpuError> {
        let limit = self.max_binding();
        if bytes > limit {
            return Err(GpuError::TooLarge { what: what.to_string(), bytes, limit });
        }
        Ok(())
    }

    fn storage_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // WebGPU rejects zero-sized bindings: empty tensors still get one word.
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn tensor(&self, buffer: wgpu::Buffer, shape: &[usize]) -> GpuTensor {
        let alloc = Allocation::new(&self.memory, buffer.size());
        GpuTensor { buffer, shape: shape.to_vec(), format: WeightFormat::F32, _alloc: alloc }
    }

    /// Bytes of tensors live on this device now, and at most since the last peak reset.
    pub fn memory(&self) -> &MemoryCounter {
        &self.memory
    }

    /// A tensor of `shape` filled with zeros (WebGPU zero-initialises new buffers).
    pub async fn zeros(&self, shape: &[usize]) -> Result<GpuTensor, GpuError> {
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        self.check_size("a tensor", bytes)?;
        let buffer = self.scoped(|| Ok(self.storage_buffer("tensor", bytes))).await?;
        Ok(self.tensor(buffer, shape))
    }

    /// Copy `data` (row-major, `shape`) to a new GPU tensor.
    pub async fn upload(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor, GpuError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(GpuError::Shape {
                op: "upload",
                detail: format!("shape {shape:?} holds {n} values but {} were given", data.len()),
            });
        }
        self.check_size("a tensor", (n * 4) as u64)?;
        let buffer = self
            .scoped(|| {
                let buffer = self.storage_buffer("tensor", (n * 4) as u64);
                self.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(data));
                Ok(buffer)
            })
            .await?;
        Ok(self.tensor(buffer, shape))
    }

    /// Copy a frozen weight to the GPU in its own format (its packed words, as the
    /// `shaders/weight_<format>.wgsl` of the kernels reading it expect them).
    pub async fn upload_weight(&self, w: &Weight) -> Result<GpuTensor, GpuError> {
        self.check_size("a weight", w.bytes())?;
        let buffer = self.weight_buffer(w, "weight").await?;
        let mut t = self.tensor(buffer, &w.shape);
        t.format = w.format;
        Ok(t)
    }

    /// Copy integer data (token ids, targets) to a new GPU buffer; WGSL reads it as `array<u32>`.
    pub async fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<GpuTensor, GpuError> {
        let as_f32: &[f32] = bytemuck::cast_slice(data);
        self.upload(as_f32, shape).await
    }

    /// Copy a u32 buffer (see `upload_u32`) back to the CPU.
    pub async fn read_u32(&self, t: &GpuTensor) -> Result<Vec<u32>, GpuError> {
        Ok(bytemuck::cast_slice(&self.read(t).await?).to_vec())
    }

    /// Copy a tensor back to the CPU.
    pub async fn read(&self, t: &GpuTensor) -> Result<Vec<f32>, GpuError> {
        if t.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = self.read_bytes(&t.buffer, t.bytes()).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Copy several tensors back with one read-back (one submission, one wait): what a caller that
    /// needs them at the same point uses instead of one `read` each.
    pub async fn read_many(&self, ts: &[&GpuTensor]) -> Result<Vec<Vec<f32>>, GpuError> {
        let pieces: Vec<(&wgpu::Buffer, u64)> = ts.iter().filter(|t| !t.is_empty()).map(|t| (&t.buffer, t.bytes())).collect();
        let bytes = self.read_pieces(&pieces).await?;
        let mut at = 0;
        Ok(ts
            .iter()
            .map(|t| {
                let n = if t.is_empty() { 0 } else { t.bytes() as usize };
                at += n;
                bytemuck::pod_collect_to_vec(&bytes[at - n..at])
            })
            .collect())
    }
}

impl GpuContext {
    /// `w` on the GPU outside the memory count (the tuner's scratch operands: they are dropped
    /// before the work they time continues, and must not show in a run's measured peak).
    pub(crate) async fn upload_uncounted(&self, w: &Weight) -> Result<GpuTensor, GpuError> {
        self.check_size("a tuning operand", w.bytes())?;
        let buffer = self.weight_buffer(w, "scratch").await?;
        let alloc = Allocation::new(&Arc::default(), buffer.size());
        Ok(GpuTensor { buffer, shape: w.shape.clone(), format: w.format, _alloc: alloc })
    }
}

impl GpuContext {
    /// A storage buffer holding `w`'s packed words.
    async fn weight_buffer(&self, w: &Weight, label: &str) -> Result<wgpu::Buffer, GpuError> {
        self.scoped(|| {
            let buffer = self.storage_buffer(label, w.bytes());
            self.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&w.words));
            Ok(buffer)
        })
        .await
    }
}
