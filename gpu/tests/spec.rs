//! The `gpu_cache` pool option and byte sizes.

use squall_gpu::{ByteSize, ByteSizeProblem, GpuCacheSpec, GpuError};

fn bytes(text: &str) -> u64 {
    text.parse::<ByteSize>()
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .bytes()
}

fn problem(text: &str) -> ByteSizeProblem {
    match text.parse::<ByteSize>() {
        Err(GpuError::InvalidByteSize { input, problem }) => {
            assert_eq!(input, text);
            problem
        }
        other => panic!("{text:?} parsed as {other:?}"),
    }
}

#[test]
fn byte_sizes_parse_with_and_without_units() {
    assert_eq!(bytes("1000000"), 1_000_000);
    assert_eq!(bytes("0"), 0);
    assert_eq!(bytes("512MiB"), 512 << 20);
    assert_eq!(bytes("8GiB"), 8 << 30);
    assert_eq!(bytes("8 GiB"), 8 << 30);
    assert_eq!(bytes(" 8gib "), 8 << 30);
    assert_eq!(bytes("4KiB"), 4_096);
    assert_eq!(bytes("2TiB"), 2 << 40);
    assert_eq!(bytes("3B"), 3);
    assert_eq!(bytes("2GB"), 2_000_000_000);
    assert_eq!(bytes("5kB"), 5_000);
    assert_eq!(bytes("7MB"), 7_000_000);
    assert_eq!(bytes("1TB"), 1_000_000_000_000);
}

#[test]
fn bad_byte_sizes_are_typed_errors() {
    assert_eq!(problem(""), ByteSizeProblem::Empty);
    assert_eq!(problem("   "), ByteSizeProblem::Empty);
    assert_eq!(problem("GiB"), ByteSizeProblem::NotANumber);
    assert_eq!(problem("-1"), ByteSizeProblem::NotANumber);
    assert_eq!(problem("1.5GiB"), ByteSizeProblem::Fractional);
    assert_eq!(problem("8 parsecs"), ByteSizeProblem::UnknownUnit);
    assert_eq!(problem("8GiBs"), ByteSizeProblem::UnknownUnit);
    assert_eq!(problem("99999999999999999999"), ByteSizeProblem::Overflow);
    assert_eq!(problem("17179869184GiB"), ByteSizeProblem::Overflow);
}

#[test]
fn byte_sizes_print_in_the_largest_exact_binary_unit() {
    assert_eq!(ByteSize::from_bytes(8 << 30).to_string(), "8GiB");
    assert_eq!(ByteSize::from_bytes(1_536 << 20).to_string(), "1536MiB");
    assert_eq!(ByteSize::from_bytes(1_000_000).to_string(), "1000000B");
    assert_eq!(ByteSize::from_bytes(0).to_string(), "0B");
    for size in [1u64, 4_096, 8 << 30, 1_000_000] {
        let printed = ByteSize::from_bytes(size).to_string();
        assert_eq!(bytes(&printed), size, "{printed} round-trips");
    }
}

#[derive(Debug, serde::Deserialize)]
struct PoolOptions {
    gpu_cache: GpuCacheSpec,
}

#[test]
fn the_pool_option_parses_from_toml_and_json() {
    let options: PoolOptions =
        toml::from_str(r#"gpu_cache = { device = 0, capacity = "8GiB" }"#).expect("toml");
    assert_eq!(
        options.gpu_cache,
        GpuCacheSpec {
            device: 0,
            capacity: ByteSize::from_bytes(8 << 30)
        }
    );
    let options: PoolOptions =
        toml::from_str("gpu_cache = { device = 1, capacity = 1000000 }").expect("integer");
    assert_eq!(options.gpu_cache.capacity.bytes(), 1_000_000);
    assert_eq!(options.gpu_cache.device, 1);
    let spec: GpuCacheSpec =
        serde_json::from_str(r#"{"device": 2, "capacity": "512MiB"}"#).expect("json");
    assert_eq!(
        spec,
        GpuCacheSpec {
            device: 2,
            capacity: ByteSize::from_bytes(512 << 20)
        }
    );
    let spec: GpuCacheSpec =
        serde_json::from_str(r#"{"device": 0, "capacity": "1000000"}"#).expect("digits string");
    assert_eq!(spec.capacity.bytes(), 1_000_000);
}

fn toml_error(text: &str) -> String {
    toml::from_str::<PoolOptions>(text)
        .expect_err(text)
        .to_string()
}

#[test]
fn bad_pool_options_say_what_is_wrong() {
    let error = toml_error(r#"gpu_cache = { device = 0, capacity = "8 parsecs" }"#);
    assert!(error.contains("unknown unit"), "{error}");
    let error = toml_error(r#"gpu_cache = { device = 0, capacity = "1.5GiB" }"#);
    assert!(error.contains("fractions"), "{error}");
    let error = toml_error(r#"gpu_cache = { device = 0, capacity = 0 }"#);
    assert!(error.contains("more than 0 bytes"), "{error}");
    let error = toml_error(r#"gpu_cache = { device = 0, capacity = "8GiB", policy = "lfu" }"#);
    assert!(error.contains("unknown field"), "{error}");
    let error = toml_error(r#"gpu_cache = { capacity = "8GiB" }"#);
    assert!(error.contains("missing field `device`"), "{error}");
    let error = toml_error(r#"gpu_cache = { device = -1, capacity = "8GiB" }"#);
    assert!(error.contains("device"), "{error}");
    let error = toml_error(r#"gpu_cache = { device = 0, capacity = -5 }"#);
    assert!(error.contains("non-negative integer"), "{error}");
    assert!(matches!(
        GpuCacheSpec::new(0, ByteSize::from_bytes(0)),
        Err(GpuError::InvalidCacheSpec { .. })
    ));
}

#[test]
fn the_pool_option_serializes_as_it_is_written() {
    let spec = GpuCacheSpec::new(1, ByteSize::from_bytes(8 << 30)).expect("spec");
    let json = serde_json::to_string(&spec).expect("json");
    assert_eq!(json, r#"{"device":1,"capacity":"8GiB"}"#);
    let back: GpuCacheSpec = serde_json::from_str(&json).expect("parses back");
    assert_eq!(back, spec);
    let odd = GpuCacheSpec::new(0, ByteSize::from_bytes(1_000_000)).expect("spec");
    let back: GpuCacheSpec =
        serde_json::from_str(&serde_json::to_string(&odd).expect("json")).expect("parses back");
    assert_eq!(back, odd);
}
