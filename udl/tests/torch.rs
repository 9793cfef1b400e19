//! The SDK's tch tensors (feature `torch`): the input wrapped where it lies and outputs
//! emitted from where they are, without copies. The CPU half runs wherever libtorch is
//! (`LIBTORCH` at build time, its `lib` on `LD_LIBRARY_PATH`); the CUDA half needs a GPU
//! (and `libtorch_cuda.so` on the library path), and prints `skipped: no GPU: ...`
//! elsewhere.
#![cfg(feature = "torch")]

use bytes::Bytes;
use squall_udl::{
    Context, DeviceView, Input, MessageId, Resources, UdlError, emit_tensor, torch_cuda,
};
use tch::{Device, Kind, Tensor};

/// Records what a handler emitted.
#[derive(Default)]
struct Recorder {
    emitted: Vec<(String, Bytes)>,
    device: Vec<(String, DeviceView)>,
    resources: Resources,
}

impl Context for Recorder {
    fn emit(&mut self, key: &str, value: Bytes) -> Result<(), UdlError> {
        self.emitted.push((key.to_string(), value));
        Ok(())
    }
    fn emit_device(&mut self, key: &str, view: &DeviceView) -> Result<(), UdlError> {
        self.device.push((key.to_string(), *view));
        Ok(())
    }
    fn config(&self) -> &str {
        "{}"
    }
    fn worker_id(&self) -> u32 {
        0
    }
    fn resources(&self) -> &Resources {
        &self.resources
    }
    fn get(&mut self, _key: &str) -> Result<Option<Bytes>, UdlError> {
        Err(UdlError::new("not in this test"))
    }
    fn put(&mut self, _key: &str, _value: Bytes) -> Result<(), UdlError> {
        Err(UdlError::new("not in this test"))
    }
}

fn input(blob: Bytes, device: Option<DeviceView>) -> Input<'static> {
    Input {
        pathname: "/frames/",
        key: "/frames/a",
        version: 1,
        timestamp_us: 0,
        previous_version: None,
        previous_version_by_key: None,
        message_id: MessageId { client: 1, seq: 1 },
        sender: 0,
        blob,
        device,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7)).collect()
}

#[test]
fn a_host_input_is_a_tensor_over_the_blob_itself() {
    let bytes = pattern(4096);
    let expected: i64 = bytes.iter().map(|b| i64::from(*b)).sum();
    let blob = Bytes::from(bytes);
    let input = input(blob.clone(), None);
    let (address, device, kind, sum) = input
        .with_tensor(|t| {
            (
                t.data_ptr() as usize,
                t.device(),
                t.kind(),
                t.sum(Kind::Int64).int64_value(&[]),
            )
        })
        .expect("a host tensor");
    assert_eq!(
        address,
        blob.as_ptr() as usize,
        "no copy: the blob's own bytes"
    );
    assert_eq!((device, kind), (Device::Cpu, Kind::Uint8));
    assert_eq!(sum, expected);
}

#[test]
fn a_host_tensor_is_emitted_as_its_bytes() {
    let values = [1.5f32, -2.0, 3.25];
    let tensor = Tensor::from_slice(&values);
    let mut ctx = Recorder::default();
    emit_tensor(&mut ctx, "out", &tensor).expect("emitted");
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(ctx.emitted, vec![("out".to_string(), Bytes::from(raw))]);
    assert!(ctx.device.is_empty());
    let strided = Tensor::from_slice(&[1u8, 2, 3, 4]).view([2, 2]).tr();
    let refused = emit_tensor(&mut ctx, "out", &strided).expect_err("not contiguous");
    assert!(refused.message.contains("contiguous"), "{refused:?}");
}

#[test]
fn a_cuda_view_is_a_cuda_tensor_at_the_same_address_and_emits_without_a_copy() {
    if let Err(reason) = torch_cuda() {
        eprintln!("skipped: no GPU: {reason}");
        return;
    }
    let bytes = pattern(3072);
    let expected: i64 = bytes.iter().map(|b| i64::from(*b)).sum();
    // Memory on the GPU standing for the node's cached copy.
    let cached = Tensor::from_slice(&bytes).to_device(Device::Cuda(0));
    let view = DeviceView {
        address: cached.data_ptr() as u64,
        len_bytes: bytes.len() as u64,
        device_type: DeviceView::CUDA,
        device_id: 0,
        stream: 0,
    };
    let input = input(Bytes::from(bytes), Some(view));
    let mut ctx = Recorder::default();
    let (address, device, sum, output) = input
        .with_tensor(|t| {
            let doubled = (t.to_kind(Kind::Int) * 2).to_kind(Kind::Uint8);
            emit_tensor(&mut ctx, "doubled", &doubled).expect("emitted");
            (
                t.data_ptr() as u64,
                t.device(),
                t.sum(Kind::Int64).int64_value(&[]),
                doubled.data_ptr() as u64,
            )
        })
        .expect("a CUDA tensor");
    eprintln!(
        "CUDA tensor over the cached copy at {address:#x} (the view says {:#x})",
        view.address
    );
    assert_eq!(
        address, view.address,
        "no copy: the cached copy's own address"
    );
    assert_eq!(device, Device::Cuda(0));
    assert_eq!(sum, expected);
    let (key, out) = ctx.device[0].clone();
    assert_eq!(key, "doubled");
    assert_eq!(
        out.address, output,
        "the view is the output tensor's own memory"
    );
    assert_eq!(
        (out.device_type, out.device_id, out.len_bytes),
        (DeviceView::CUDA, 0, 3072)
    );
    assert!(
        ctx.emitted.is_empty(),
        "a GPU output goes to the node as a device view"
    );
}
