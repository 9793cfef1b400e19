//! The console printer: prints one line per object it sees and passes the object on,
//! unchanged and uncopied, to every destination of its vertex.
//!
//! Configuration (`user_defined_logic_config_list`), all optional:
//! - `"quiet": true`: print nothing;
//! - `"fail_on": "TEXT"`: an object whose value contains TEXT fails the invocation;
//! - `"panic_on": "TEXT"`: ... panics instead (the node catches it and counts an error);
//! - `"work_ms": N`: takes N ms per object, as a heavier UDL would (tests use it to have
//!   work in flight when they kill a node);
//! - `"copy_to": "/pool/prefix/"`: also puts the object under that prefix through the
//!   context's client, reads it back with the context's `get`, and fails the invocation
//!   unless it reads what it wrote (tests use it for a UDL's client calls);
//! - `"stamp": true`: passes on, instead of the object, the time its handler started
//!   (microseconds since the Unix epoch, 8 bytes little-endian): the trigger bench reads
//!   it to measure put → UDL start.
//! - `"report_where": true`: passes on, instead of the object, where its bytes were
//!   handed over, as one text line: `blob=0x<address> len=<bytes> device=<view>`, the
//!   view being `none` or `<DLPack device type>:<device id>:0x<address>:<bytes>:<stream>`
//!   (`Input::device`), and ` gpus=<ordinals>` (the resources granted); tests use it to
//!   check that a GPU-cached pool's UDL gets a view of the very buffer (host tier) or a
//!   device pointer (GPU).
//!
//! Built with `SQUALL_PRINTER_TAG=TEXT` in the environment, it prefixes what it passes on
//! with TEXT (a copy, then): tests use such a build as a new version of the same UDL.
//!
//! It reads its configuration by hand to stay free of dependencies beyond the SDK.

use squall_udl::{Context, Input, Udl, UdlError, export_udl};

struct Printer {
    quiet: bool,
    stamp: bool,
    report_where: bool,
    copy_to: Option<String>,
    work_ms: u64,
    fail_on: Option<String>,
    panic_on: Option<String>,
}

/// The number value of `"field": N` in a flat JSON object, if any.
fn number_field(config: &str, field: &str) -> Option<u64> {
    let at = config.find(&format!("\"{field}\""))?;
    let rest = config[at + field.len() + 2..]
        .trim_start()
        .strip_prefix(':')?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The string value of `"field": "..."` in a flat JSON object (no escapes), if any.
fn string_field(config: &str, field: &str) -> Option<String> {
    let at = config.find(&format!("\"{field}\""))?;
    let rest = &config[at + field.len() + 2..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

impl Printer {
    fn new(config: &str) -> Result<Printer, String> {
        if !config.trim_start().starts_with('{') {
            return Err(format!(
                "the configuration must be a JSON object, not {config}"
            ));
        }
        Ok(Printer {
            quiet: config.contains("\"quiet\": true") || config.contains("\"quiet\":true"),
            stamp: config.contains("\"stamp\": true") || config.contains("\"stamp\":true"),
            report_where: config.contains("\"report_where\": true")
                || config.contains("\"report_where\":true"),
            work_ms: number_field(config, "work_ms").unwrap_or(0),
            copy_to: string_field(config, "copy_to"),
            fail_on: string_field(config, "fail_on"),
            panic_on: string_field(config, "panic_on"),
        })
    }
}

fn bytes_of(value: u64) -> squall_udl::Bytes {
    squall_udl::Bytes::copy_from_slice(&value.to_le_bytes())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

impl Udl for Printer {
    fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError> {
        if self.stamp {
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let stamp = bytes_of(now_us);
            return ctx.emit(input.key_suffix(), stamp);
        }
        if self.report_where {
            let device = match &input.device {
                Some(view) => format!(
                    "{}:{}:{:#x}:{}:{}",
                    view.device_type, view.device_id, view.address, view.len_bytes, view.stream
                ),
                None => "none".to_string(),
            };
            let gpus: Vec<String> = ctx.resources().gpus.iter().map(u32::to_string).collect();
            let report = format!(
                "blob={:#x} len={} device={device} gpus={}",
                input.blob.as_ptr() as u64,
                input.blob.len(),
                gpus.join(",")
            );
            return ctx.emit(input.key_suffix(), report.into_bytes().into());
        }
        if let Some(text) = &self.panic_on
            && contains(&input.blob, text)
        {
            panic!("asked to panic on {text:?}");
        }
        if let Some(text) = &self.fail_on
            && contains(&input.blob, text)
        {
            return Err(UdlError::new(format!("asked to fail on {text:?}")));
        }
        if let Some(prefix) = &self.copy_to {
            let key = format!("{prefix}{}", input.key_suffix());
            ctx.put(&key, input.blob.clone())?;
            match ctx.get(&key)? {
                Some(read) if read == input.blob => {}
                other => {
                    return Err(UdlError::new(format!(
                        "{key} read back as {:?}, not what was put",
                        other.map(|b| b.len())
                    )));
                }
            }
        }
        if self.work_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.work_ms));
        }
        if !self.quiet {
            println!(
                "[printer worker {}] {} v{} {} bytes",
                ctx.worker_id(),
                input.key,
                input.version,
                input.blob.len()
            );
        }
        match option_env!("SQUALL_PRINTER_TAG") {
            Some(tag) => {
                let mut tagged = tag.as_bytes().to_vec();
                tagged.extend_from_slice(&input.blob);
                ctx.emit(input.key_suffix(), tagged.into())
            }
            // The same buffer goes on: a clone of `Bytes` shares it.
            None => ctx.emit(input.key_suffix(), input.blob.clone()),
        }
    }
}

export_udl! {
    uuid: "48e60f7c-8500-11eb-8755-0242ac110002",
    description: "console printer: prints each object and passes it on unchanged",
    constructor: Printer::new,
}
