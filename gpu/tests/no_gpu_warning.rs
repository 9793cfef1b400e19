//! The no-GPU fallback warns once per process, however many pools fall back. Alone in its
//! test binary because the "once" is process-wide.

use std::io::Write;
use std::sync::{Arc, Mutex};

use squall_gpu::{ByteSize, GpuAvailability, GpuCacheSpec, Location, tier_for_spec};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn falling_back_to_host_memory_warns_once_with_the_reason() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let no_gpu = GpuAvailability::Unavailable {
        reason: "libcuda.so not found: no NVIDIA driver on this machine".to_owned(),
    };
    let spec = GpuCacheSpec::new(0, ByteSize::from_bytes(1 << 20)).expect("spec");
    tracing::subscriber::with_default(subscriber, || {
        for _pool in 0..3 {
            let tier = tier_for_spec(&spec, &no_gpu).expect("fallback");
            assert_eq!(tier.location(), Location::Host);
        }
    });
    let log = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
    let warning = "no GPU found: libcuda.so not found: no NVIDIA driver on this machine; \
                   GPU-cached pools are served from host memory";
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(log.contains("WARN"), "{log}");
}
