//! Real plugins, really loaded: the example printer built as a `cdylib`, and libraries
//! compiled here with `rustc` that break the contract in one way each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bytes::Bytes;
use squall_udl::{Input, MessageId, Resources};
use squall_udl_host::plugin::{Invocation, InvokeError, Plugin, PluginError};

/// `target/<profile>` of this test binary.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Builds the printer plugin (in its own target directory: the outer cargo holds the
/// workspace's) and returns its path.
fn printer() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let profile = profile_dir();
        let release = profile.file_name().is_some_and(|n| n == "release");
        let target = profile.parent().expect("target/").join("udl-plugins");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .args(["build", "--quiet", "-p", "squall-udl-example-printer"])
            .env("CARGO_TARGET_DIR", &target);
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo");
        assert!(status.success(), "building the printer plugin failed");
        target
            .join(if release { "release" } else { "debug" })
            .join("libsquall_udl_example_printer.so")
    })
}

/// Compiles `source` into a shared library with `rustc`.
fn compile(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.rs"));
    std::fs::write(&src, source).expect("write the source");
    let out = dir.join(format!("lib{name}.so"));
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--edition", "2024", "--crate-type", "cdylib", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(status.success(), "compiling {name} failed");
    out
}

fn input(blob: &Bytes) -> Input<'static> {
    Input {
        pathname: "/in/",
        key: "/in/cam1/frame7",
        version: 42,
        timestamp_us: 1_700_000_000_000_000,
        previous_version: Some(40),
        previous_version_by_key: None,
        message_id: MessageId { client: 9, seq: 3 },
        sender: 1,
        blob: blob.clone(),
        device: None,
    }
}

#[test]
fn the_printer_passes_its_input_on_without_a_copy() {
    let plugin = Plugin::load(printer()).expect("the printer loads");
    assert_eq!(plugin.uuid, "48e60f7c-8500-11eb-8755-0242ac110002");
    assert!(
        plugin.description.contains("printer"),
        "{}",
        plugin.description
    );
    let instance = plugin
        .instantiate(r#"{"quiet": true}"#)
        .expect("an instance");
    let blob = Bytes::from(vec![7u8; 64 << 10]);
    let mut emitted: Vec<(String, Bytes)> = Vec::new();
    let mut emit = |key: &str, value: Bytes| {
        emitted.push((key.to_string(), value));
        Ok(())
    };
    let resources = Resources::default();
    instance
        .invoke(
            &input(&blob),
            Invocation {
                worker_id: 3,
                resources: &resources,
                emit: &mut emit,
                emit_device: None,
                client: None,
            },
        )
        .expect("the handler succeeds");
    assert_eq!(emitted.len(), 1);
    let (key, value) = &emitted[0];
    assert_eq!(key, "cam1/frame7", "emit gets the key below the vertex");
    // Node buffer -> plugin -> emit -> node: the very same memory throughout.
    assert_eq!(value.as_ptr(), blob.as_ptr(), "the blob was copied");
    assert_eq!(value.len(), blob.len());
    // The output outlives the instance and the plugin: the library stays loaded for it.
    let value = value.clone();
    drop(emitted);
    drop(instance);
    drop(plugin);
    assert!(value.iter().all(|b| *b == 7));
}

#[test]
fn failures_and_panics_are_that_invocations_error_and_the_instance_goes_on() {
    let plugin = Plugin::load(printer()).expect("the printer loads");
    let instance = plugin
        .instantiate(r#"{"quiet": true, "fail_on": "bad", "panic_on": "boom"}"#)
        .expect("an instance");
    let resources = Resources::default();
    let mut outputs = 0;
    let mut run = |blob: &'static [u8]| {
        let mut emit = |_: &str, _: Bytes| {
            outputs += 1;
            Ok(())
        };
        instance.invoke(
            &input(&Bytes::from_static(blob)),
            Invocation {
                worker_id: 0,
                resources: &resources,
                emit: &mut emit,
                emit_device: None,
                client: None,
            },
        )
    };
    let failed = run(b"a bad one").expect_err("fails");
    assert!(
        matches!(&failed, InvokeError::Failed { message, .. } if message.contains("fail on")),
        "{failed}"
    );
    let panicked = run(b"boom").expect_err("panics");
    assert!(
        matches!(&panicked, InvokeError::Panicked { message, .. } if message.contains("panic on")),
        "{panicked}"
    );
    run(b"fine").expect("the instance still works after a panic");
    run(b"fine again").expect("and again");
    assert_eq!(outputs, 2, "only the good invocations emitted");
}

#[test]
fn an_emit_refused_by_the_node_is_the_handlers_error() {
    let plugin = Plugin::load(printer()).expect("the printer loads");
    let instance = plugin
        .instantiate(r#"{"quiet": true}"#)
        .expect("an instance");
    let resources = Resources::default();
    let mut emit = |_: &str, _: Bytes| Err("the destination queue is full".to_string());
    let e = instance
        .invoke(
            &input(&Bytes::from_static(b"x")),
            Invocation {
                worker_id: 0,
                resources: &resources,
                emit: &mut emit,
                emit_device: None,
                client: None,
            },
        )
        .expect_err("refused");
    assert!(e.to_string().contains("queue is full"), "{e}");
}

#[test]
fn a_configuration_the_udl_refuses_is_a_create_error() {
    let plugin = Plugin::load(printer()).expect("the printer loads");
    let e = plugin.instantiate("[1, 2]").expect_err("not an object");
    assert!(
        matches!(&e, PluginError::Create { reason, .. } if reason.contains("JSON object")),
        "{e}"
    );
}

#[test]
fn libraries_that_are_not_good_plugins_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Not a library at all.
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"\x7fELF but not really").expect("write");
    assert!(matches!(Plugin::load(&junk), Err(PluginError::Load { .. })));
    // A library without our entry points.
    let plain = compile(
        dir.path(),
        "plain",
        "#[unsafe(no_mangle)] pub extern \"C\" fn something_else() -> u32 { 1 }",
    );
    let e = Plugin::load(&plain).expect_err("no entry point");
    assert!(
        matches!(
            e,
            PluginError::MissingEntryPoint {
                symbol: "squall_udl_abi_version",
                ..
            }
        ),
        "{e}"
    );
    // Another ABI version: refused before anything else is read.
    let future = compile(
        dir.path(),
        "future",
        "#[unsafe(no_mangle)] pub extern \"C\" fn squall_udl_abi_version() -> u32 { 99 }",
    );
    let e = Plugin::load(&future).expect_err("wrong ABI");
    assert!(
        matches!(
            e,
            PluginError::WrongAbi {
                found: 99,
                expected: squall_udl::ABI_VERSION,
                ..
            }
        ),
        "{e}"
    );
    // The right version but no descriptor entry point.
    let half = compile(
        dir.path(),
        "half",
        &format!(
            "#[unsafe(no_mangle)] pub extern \"C\" fn squall_udl_abi_version() -> u32 {{ {} }}",
            squall_udl::ABI_VERSION
        ),
    );
    let e = Plugin::load(&half).expect_err("no entry");
    assert!(
        matches!(
            e,
            PluginError::MissingEntryPoint {
                symbol: "squall_udl_entry",
                ..
            }
        ),
        "{e}"
    );
}
