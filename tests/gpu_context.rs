//! The GPU context: adapter limits, typed errors, and the self-test the page shows.

mod common;
use common::gpu;

use loratab::gpu::GpuError;

gpu_test! {
    /// We request the adapter's own limits, not WebGPU's defaults (128 MiB per storage binding).
    async fn requests_adapter_limits() {
        let ctx = gpu().await;
        let info = ctx.adapter();
        assert!(!info.name.is_empty());
        assert!(info.max_storage_binding >= 128 << 20, "{info:?}");
        assert_eq!(ctx.limits().max_storage_buffer_binding_size as u64, info.max_storage_binding);
    }
}

gpu_test! {
    async fn too_large_tensor_is_a_typed_error() {
        let ctx = gpu().await;
        let limit = ctx.limits().max_buffer_size.min(ctx.limits().max_storage_buffer_binding_size as u64);
        let n = (limit / 4 + 1) as usize;
        let err = ctx.zeros(&[n]).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, GpuError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("more than this GPU allows"), "{err}");
    }
}

gpu_test! {
    async fn upload_with_wrong_shape_is_a_typed_error() {
        let ctx = gpu().await;
        let err = ctx.upload(&[1.0, 2.0, 3.0], &[2, 2]).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, GpuError::Shape { .. }), "{err:?}");
    }
}

gpu_test! {
    /// A command the GPU rejects (here: a copy past the end of a buffer) comes back from the
    /// error scope as GpuError::Validation instead of panicking in wgpu's default handler.
    async fn validation_error_is_captured() {
        let ctx = gpu().await;
        let a = ctx.zeros(&[4]).await.unwrap();
        let b = ctx.zeros(&[8]).await.unwrap();
        let err = ctx
            .run(|enc| {
                enc.copy_buffer_to_buffer(&b.buffer, 0, &a.buffer, 0, 32);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, GpuError::Validation(_)), "{err:?}");
        // The context stays usable afterwards.
        let x = ctx.upload(&[1.0, 2.0], &[2]).await.unwrap();
        assert_eq!(ctx.read(&x).await.unwrap(), vec![1.0, 2.0]);
    }
}

gpu_test! {
    /// Destroying the device stands in for a driver reset: later calls say the device is gone
    /// instead of hanging.
    async fn lost_device_is_a_typed_error() {
        let ctx = gpu().await;
        let x = ctx.upload(&[1.0, 2.0], &[2]).await.unwrap();
        ctx.device.destroy();
        let err = ctx.read(&x).await.unwrap_err();
        assert!(matches!(err, GpuError::DeviceLost(_)), "{err:?}");
        assert!(err.to_string().contains("reload"), "{err}");
    }
}

gpu_test! {
    async fn selftest_passes() {
        let ctx = gpu().await;
        let checks = loratab::selftest::run(&ctx).await.unwrap();
        // Nine checks (src/selftest.rs): fewer would mean some silently did not run.
        assert_eq!(checks.len(), 9, "{checks:?}");
        for c in &checks {
            assert!(c.passed, "{c:?}");
        }
    }
}
