//! `GpuTensor`: an f32 storage buffer and its row-major shape.

use super::{GpuContext, GpuError};

pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
}

impl GpuTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        (self.len() * 4) as u64
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

    /// A tensor of `shape` filled with zeros (WebGPU zero-initialises new buffers).
    pub async fn zeros(&self, shape: &[usize]) -> Result<GpuTensor, GpuError> {
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        self.check_size("a tensor", bytes)?;
        let buffer = self.scoped(|| Ok(self.storage_buffer("tensor", bytes))).await?;
        Ok(GpuTensor { buffer, shape: shape.to_vec() })
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
        Ok(GpuTensor { buffer, shape: shape.to_vec() })
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
}
