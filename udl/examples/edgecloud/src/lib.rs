//! An edge + cloud sensor pipeline: one plugin, two roles chosen by its configuration
//! (the SDK exports one UDL per library, so a role per vertex is how one plugin serves
//! two stages; `wordcount` and `pipeline` do the same).
//!
//! Inputs are sensor readings, ASCII `"<seq> <reading>"` (e.g. `"17 42.5"`): `seq` an
//! unsigned integer that grows per sensor, `reading` a finite decimal number. Surrounding
//! ASCII whitespace (a trailing newline from `echo`) is ignored; anything else is refused
//! as that invocation's error, which the node counts and logs.
//!
//! - `{"role": "filter", "threshold": 40}` runs at the edge on `/sensors/<sensor>`. It
//!   passes a reading on only when `reading >= threshold`; without `threshold` it passes
//!   everything. What it passes on is the input itself (the same `Bytes`, sharing the
//!   node's receive buffer: no copy) under the key `<sensor>`, to which the runtime
//!   prefixes each destination (`"cloud:/ingest/"` sends it to the cloud site).
//! - `{"role": "aggregate"}` runs in the cloud on `/ingest/<sensor>`, `stateful` (one
//!   sensor's inputs in order, on one worker). It keeps a running count and mean per
//!   sensor in the UDL instance and emits `"<seq> <reading> count=<n> mean=<m>"` under
//!   `<sensor>` (numbers in Rust's shortest round-trip form: `42.50` is written `42.5`).
//!   At most `sensors_max` sensors are tracked (default [`SENSORS_TRACKED_MAX`]); a
//!   reading from one more sensor is refused, never silently dropped or evicted.
//!
//! Re-deliveries: the WAN link and UDL re-runs are at least once, so the aggregate counts
//! a reading only when its `seq` is above the last counted one of its sensor; a repeat
//! (or an older reading arriving late) emits nothing and changes nothing. A sensor that
//! restarts its numbering from 0 is therefore ignored until it passes its old `seq`.
//!
//! The state lives in the process that runs a sensor's inputs: the node picks one member
//! of the key's shard (`one` dispatcher) while the view is unchanged; a view change moves
//! the sensor to another member, whose count starts afresh.
//!
//! The configuration is read by a small flat-JSON reader here (the SDK has no JSON
//! dependency, and a plugin should stay light): unknown fields, a field given twice, a
//! field of the other role or a wrong type are refused when the DFG is added.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use squall_udl::{Bytes, Context, Input, Udl, UdlError, export_udl};

/// Sensors the aggregate role tracks unless its configuration says `sensors_max`.
pub const SENSORS_TRACKED_MAX: usize = 10_000;
/// The most `sensors_max` may be: the state is in memory, one entry per sensor.
pub const SENSORS_TRACKED_MAX_CEILING: usize = 1_000_000;
/// The longest reading accepted, surrounding whitespace included; a reading is two short
/// numbers, so anything longer is not one.
pub const READING_BYTES_MAX: usize = 64;
/// The longest configuration accepted (a few dozen bytes in practice).
pub const CONFIG_BYTES_MAX: usize = 4096;

// ---------------------------------------------------------------------------------------
// Readings
// ---------------------------------------------------------------------------------------

/// One reading: `"<seq> <reading>"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub seq: u64,
    pub value: f64,
}

/// Parses `"<seq> <reading>"`: two ASCII tokens separated by spaces or tabs, an unsigned
/// integer and a finite number, with optional whitespace around them.
pub fn parse_reading(blob: &[u8]) -> Result<Reading, String> {
    if blob.len() > READING_BYTES_MAX {
        return Err(format!(
            "a reading is at most READING_BYTES_MAX = {READING_BYTES_MAX} bytes, this one is {}",
            blob.len()
        ));
    }
    let text = std::str::from_utf8(blob)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or("a reading is ASCII text \"<seq> <reading>\"")?;
    let mut tokens = text.split_ascii_whitespace();
    let (Some(seq_text), Some(value_text), None) = (tokens.next(), tokens.next(), tokens.next())
    else {
        return Err(format!(
            "expected \"<seq> <reading>\" (two numbers), got {text:?}"
        ));
    };
    let seq: u64 = seq_text
        .parse()
        .map_err(|_| format!("seq {seq_text:?} is not an unsigned integer"))?;
    let value: f64 = value_text
        .parse()
        .ok()
        .filter(|value: &f64| value.is_finite())
        .ok_or_else(|| format!("reading {value_text:?} is not a finite number"))?;
    Ok(Reading { seq, value })
}

// ---------------------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------------------

/// Whether the filter passes `value` on: always without a threshold, else at or above it.
pub fn filter_passes(threshold: Option<f64>, value: f64) -> bool {
    threshold.is_none_or(|threshold| value >= threshold)
}

// ---------------------------------------------------------------------------------------
// Aggregate
// ---------------------------------------------------------------------------------------

/// A sensor's running statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorStats {
    /// Readings counted.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// The `seq` of the last reading counted.
    pub last_seq: u64,
}

/// What [`Aggregates::record`] did with a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recorded {
    /// Counted; the sensor's statistics after it.
    Counted(SensorStats),
    /// Not counted: its `seq` is not above the sensor's `last_seq` (a re-delivery, or an
    /// older reading arriving late).
    Repeat { last_seq: u64 },
}

/// Why a reading could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggregateError {
    /// A new sensor while `sensors_max` are already tracked.
    TooManySensors { sensors_max: usize },
}

impl fmt::Display for AggregateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregateError::TooManySensors { sensors_max } => write!(
                f,
                "{sensors_max} sensors are tracked already (sensors_max); a new one is refused"
            ),
        }
    }
}

/// Running count and mean per sensor, for at most `sensors_max` sensors.
#[derive(Debug)]
pub struct Aggregates {
    by_sensor: HashMap<String, SensorStats>,
    sensors_max: usize,
}

impl Aggregates {
    pub fn new(sensors_max: usize) -> Aggregates {
        assert!(sensors_max >= 1, "sensors_max must be at least 1");
        Aggregates {
            by_sensor: HashMap::new(),
            sensors_max,
        }
    }

    /// Sensors tracked.
    pub fn len(&self) -> usize {
        self.by_sensor.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sensor.is_empty()
    }

    /// Counts `reading` for `sensor` unless it is a repeat (see [`Recorded::Repeat`]).
    pub fn record(&mut self, sensor: &str, reading: Reading) -> Result<Recorded, AggregateError> {
        if let Some(stats) = self.by_sensor.get_mut(sensor) {
            if reading.seq <= stats.last_seq {
                return Ok(Recorded::Repeat {
                    last_seq: stats.last_seq,
                });
            }
            stats.count += 1;
            // Incremental mean: no sum to grow without bound.
            stats.mean += (reading.value - stats.mean) / stats.count as f64;
            stats.last_seq = reading.seq;
            return Ok(Recorded::Counted(*stats));
        }
        if self.by_sensor.len() >= self.sensors_max {
            return Err(AggregateError::TooManySensors {
                sensors_max: self.sensors_max,
            });
        }
        let stats = SensorStats {
            count: 1,
            mean: reading.value,
            last_seq: reading.seq,
        };
        self.by_sensor.insert(sensor.to_string(), stats);
        assert!(self.by_sensor.len() <= self.sensors_max);
        Ok(Recorded::Counted(stats))
    }
}

/// The aggregate's output: `"<seq> <reading> count=<n> mean=<m>"`.
pub fn format_aggregate(reading: Reading, stats: SensorStats) -> String {
    format!(
        "{} {} count={} mean={}",
        reading.seq, reading.value, stats.count, stats.mean
    )
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// A scalar JSON value (the configuration is a flat object).
#[derive(Debug, Clone, PartialEq)]
enum JsonScalar {
    String(String),
    Number(f64),
    Bool(bool),
    Null,
}

impl JsonScalar {
    fn type_name(&self) -> &'static str {
        match self {
            JsonScalar::String(_) => "a string",
            JsonScalar::Number(_) => "a number",
            JsonScalar::Bool(_) => "a boolean",
            JsonScalar::Null => "null",
        }
    }
}

/// Reads a flat JSON object (`{"key": scalar, ...}`) byte by byte.
struct FlatJsonReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl FlatJsonReader<'_> {
    fn skip_whitespace(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, wanted: u8) -> Result<(), String> {
        match self.peek() {
            Some(byte) if byte == wanted => {
                self.at += 1;
                Ok(())
            }
            Some(byte) => Err(format!(
                "expected '{}' at byte {}, found '{}'",
                wanted as char, self.at, byte as char
            )),
            None => Err(format!("expected '{}', found the end", wanted as char)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut text = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err("a string is not closed".to_string());
            };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escaped = match self.bytes.get(self.at) {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'n') => b'\n',
                        Some(b't') => b'\t',
                        _ => return Err("only the escapes \\\" \\\\ \\/ \\n \\t are read".into()),
                    };
                    self.at += 1;
                    text.push(escaped);
                }
                _ => text.push(byte),
            }
        }
        String::from_utf8(text).map_err(|_| "a string is not UTF-8".to_string())
    }

    fn scalar(&mut self) -> Result<JsonScalar, String> {
        match self.peek() {
            Some(b'"') => self.string().map(JsonScalar::String),
            Some(b'{' | b'[') => {
                Err("nested objects and arrays are not part of this configuration".into())
            }
            Some(_) => {
                let start = self.at;
                while self.bytes.get(self.at).is_some_and(|byte| {
                    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.')
                }) {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.bytes[start..self.at])
                    .map_err(|_| "not UTF-8".to_string())?;
                match word {
                    "true" => Ok(JsonScalar::Bool(true)),
                    "false" => Ok(JsonScalar::Bool(false)),
                    "null" => Ok(JsonScalar::Null),
                    _ => word
                        .parse::<f64>()
                        .ok()
                        .filter(|number| number.is_finite())
                        .map(JsonScalar::Number)
                        .ok_or_else(|| format!("{word:?} is not a JSON value")),
                }
            }
            None => Err("expected a value, found the end".into()),
        }
    }

    /// The object's fields in order; a field given twice is refused.
    fn object(mut self) -> Result<Vec<(String, JsonScalar)>, String> {
        let mut fields: Vec<(String, JsonScalar)> = Vec::new();
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                let name = self.string()?;
                self.expect(b':')?;
                let value = self.scalar()?;
                if fields.iter().any(|(earlier, _)| *earlier == name) {
                    return Err(format!("field {name:?} is given twice"));
                }
                fields.push((name, value));
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(format!("expected ',' or '}}' at byte {}", self.at)),
                }
            }
        }
        if self.peek().is_some() {
            return Err(format!(
                "unexpected text after the object at byte {}",
                self.at
            ));
        }
        Ok(fields)
    }
}

/// What a vertex asked this UDL to be.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleConfig {
    Filter { threshold: Option<f64> },
    Aggregate { sensors_max: usize },
}

/// Parses the UDL's JSON configuration (see the module documentation).
pub fn parse_config(config: &str) -> Result<RoleConfig, String> {
    if config.len() > CONFIG_BYTES_MAX {
        return Err(format!(
            "the configuration is over CONFIG_BYTES_MAX = {CONFIG_BYTES_MAX} bytes"
        ));
    }
    let fields = FlatJsonReader {
        bytes: config.as_bytes(),
        at: 0,
    }
    .object()?;
    let mut role = None;
    let mut threshold = None;
    let mut sensors_max = None;
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("role", JsonScalar::String(text)) => role = Some(text),
            ("threshold", JsonScalar::Number(number)) => threshold = Some(number),
            ("sensors_max", JsonScalar::Number(number)) => sensors_max = Some(number),
            (name @ ("role" | "threshold" | "sensors_max"), other) => {
                return Err(format!(
                    "{name:?} must be {}, not {}",
                    if name == "role" {
                        "a string"
                    } else {
                        "a number"
                    },
                    other.type_name()
                ));
            }
            (other, _) => {
                return Err(format!(
                    "unknown field {other:?} (known: role, threshold, sensors_max)"
                ));
            }
        }
    }
    match role.as_deref() {
        Some("filter") => {
            if sensors_max.is_some() {
                return Err("\"sensors_max\" belongs to the aggregate role".into());
            }
            Ok(RoleConfig::Filter { threshold })
        }
        Some("aggregate") => {
            if threshold.is_some() {
                return Err("\"threshold\" belongs to the filter role".into());
            }
            let sensors_max = match sensors_max {
                None => SENSORS_TRACKED_MAX,
                Some(number)
                    if number.fract() == 0.0
                        && (1.0..=SENSORS_TRACKED_MAX_CEILING as f64).contains(&number) =>
                {
                    number as usize
                }
                Some(number) => {
                    return Err(format!(
                        "\"sensors_max\" is an integer from 1 to SENSORS_TRACKED_MAX_CEILING = \
                         {SENSORS_TRACKED_MAX_CEILING}, not {number}"
                    ));
                }
            };
            Ok(RoleConfig::Aggregate { sensors_max })
        }
        Some(other) => Err(format!(
            "\"role\" is \"filter\" or \"aggregate\", not {other:?}"
        )),
        None => Err(r#"missing "role": {"role": "filter"} or {"role": "aggregate"}"#.into()),
    }
}

// ---------------------------------------------------------------------------------------
// The UDL
// ---------------------------------------------------------------------------------------

enum Role {
    Filter { threshold: Option<f64> },
    Aggregate(Mutex<Aggregates>),
}

struct EdgeCloud {
    role: Role,
}

impl EdgeCloud {
    fn new(config: &str) -> Result<EdgeCloud, String> {
        let role = match parse_config(config)? {
            RoleConfig::Filter { threshold } => Role::Filter { threshold },
            RoleConfig::Aggregate { sensors_max } => {
                Role::Aggregate(Mutex::new(Aggregates::new(sensors_max)))
            }
        };
        Ok(EdgeCloud { role })
    }
}

impl Udl for EdgeCloud {
    fn handle(&self, input: &Input<'_>, ctx: &mut dyn Context) -> Result<(), UdlError> {
        let sensor = input.key_suffix();
        if sensor.is_empty() {
            return Err(UdlError::new(format!(
                "{}: no sensor name below the vertex {}",
                input.key, input.pathname
            )));
        }
        let reading = parse_reading(&input.blob)
            .map_err(|reason| UdlError::new(format!("{}: {reason}", input.key)))?;
        match &self.role {
            Role::Filter { threshold } => {
                if !filter_passes(*threshold, reading.value) {
                    return Ok(());
                }
                // The input's own buffer goes on: cloning `Bytes` shares it.
                ctx.emit(sensor, input.blob.clone())
            }
            Role::Aggregate(aggregates) => {
                let recorded = aggregates
                    .lock()
                    .map_err(|_| UdlError::new("the aggregates were poisoned by a panic"))?
                    .record(sensor, reading)
                    .map_err(|err| UdlError::new(format!("{}: {err}", input.key)))?;
                match recorded {
                    Recorded::Counted(stats) => {
                        ctx.emit(sensor, Bytes::from(format_aggregate(reading, stats)))
                    }
                    Recorded::Repeat { .. } => Ok(()),
                }
            }
        }
    }
}

export_udl! {
    uuid: "7255a1c1-81b1-4c7c-9691-fc47a667dbbb",
    description: "edge+cloud sensors: filter readings by threshold (edge), running count and mean per sensor (cloud)",
    constructor: EdgeCloud::new,
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_udl::{DeviceView, MessageId, Resources};

    #[test]
    fn readings_parse() {
        assert_eq!(
            parse_reading(b"17 42.5"),
            Ok(Reading {
                seq: 17,
                value: 42.5
            })
        );
        assert_eq!(
            parse_reading(b"  0\t-3\n"),
            Ok(Reading {
                seq: 0,
                value: -3.0
            })
        );
        assert_eq!(
            parse_reading(b"1 1e3"),
            Ok(Reading {
                seq: 1,
                value: 1000.0
            })
        );
    }

    #[test]
    fn malformed_readings_are_refused() {
        for bad in [
            &b""[..],
            b"17",
            b"17 42.5 9",
            b"-1 42.5",
            b"x 42.5",
            b"17 warm",
            b"17 NaN",
            b"17 inf",
            b"17 4\xff",
            "17 42\u{a0}5".as_bytes(),
        ] {
            assert!(parse_reading(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!("1 {}", "9".repeat(READING_BYTES_MAX));
        let err = parse_reading(long.as_bytes()).expect_err("an over-long reading parsed");
        assert!(err.contains("READING_BYTES_MAX"), "{err}");
    }

    #[test]
    fn filter_threshold() {
        assert!(filter_passes(None, -1e9));
        assert!(filter_passes(Some(40.0), 40.0));
        assert!(filter_passes(Some(40.0), 40.5));
        assert!(!filter_passes(Some(40.0), 39.99));
        assert!(!filter_passes(Some(0.0), -0.5));
    }

    #[test]
    fn aggregates_count_and_mean_per_sensor() {
        let mut aggregates = Aggregates::new(8);
        let counted = |recorded| match recorded {
            Ok(Recorded::Counted(stats)) => stats,
            other => panic!("not counted: {other:?}"),
        };
        let a1 = counted(aggregates.record(
            "a",
            Reading {
                seq: 1,
                value: 10.0,
            },
        ));
        assert_eq!((a1.count, a1.mean, a1.last_seq), (1, 10.0, 1));
        let b1 = counted(aggregates.record("b", Reading { seq: 5, value: 1.0 }));
        assert_eq!((b1.count, b1.mean), (1, 1.0));
        let a2 = counted(aggregates.record(
            "a",
            Reading {
                seq: 2,
                value: 20.0,
            },
        ));
        assert_eq!((a2.count, a2.mean), (2, 15.0));
        // A gap in seq is fine: only order matters.
        let a3 = counted(aggregates.record(
            "a",
            Reading {
                seq: 9,
                value: 45.0,
            },
        ));
        assert_eq!((a3.count, a3.mean, a3.last_seq), (3, 25.0, 9));
        assert_eq!(aggregates.len(), 2);
    }

    #[test]
    fn repeats_are_not_counted_again() {
        let mut aggregates = Aggregates::new(8);
        let _ = aggregates.record(
            "a",
            Reading {
                seq: 3,
                value: 10.0,
            },
        );
        for seq in [3, 2, 0] {
            assert_eq!(
                aggregates.record("a", Reading { seq, value: 99.0 }),
                Ok(Recorded::Repeat { last_seq: 3 })
            );
        }
        match aggregates.record(
            "a",
            Reading {
                seq: 4,
                value: 20.0,
            },
        ) {
            Ok(Recorded::Counted(stats)) => assert_eq!((stats.count, stats.mean), (2, 15.0)),
            other => panic!("not counted: {other:?}"),
        }
    }

    #[test]
    fn sensors_tracked_are_bounded() {
        let mut aggregates = Aggregates::new(2);
        let reading = Reading { seq: 1, value: 1.0 };
        assert!(aggregates.record("a", reading).is_ok());
        assert!(aggregates.record("b", reading).is_ok());
        assert_eq!(
            aggregates.record("c", reading),
            Err(AggregateError::TooManySensors { sensors_max: 2 })
        );
        // Known sensors go on.
        assert!(matches!(
            aggregates.record("a", Reading { seq: 2, value: 3.0 }),
            Ok(Recorded::Counted(_))
        ));
        assert_eq!(aggregates.len(), 2);
    }

    #[test]
    fn aggregate_output_format() {
        let stats = SensorStats {
            count: 3,
            mean: 25.0,
            last_seq: 17,
        };
        assert_eq!(
            format_aggregate(
                Reading {
                    seq: 17,
                    value: 42.50
                },
                stats
            ),
            "17 42.5 count=3 mean=25"
        );
    }

    #[test]
    fn configurations() {
        assert_eq!(
            parse_config(r#"{"role":"filter","threshold":40.5}"#),
            Ok(RoleConfig::Filter {
                threshold: Some(40.5)
            })
        );
        assert_eq!(
            parse_config(r#" { "role" : "filter" } "#),
            Ok(RoleConfig::Filter { threshold: None })
        );
        assert_eq!(
            parse_config(r#"{"threshold": -5, "role": "filter"}"#),
            Ok(RoleConfig::Filter {
                threshold: Some(-5.0)
            })
        );
        assert_eq!(
            parse_config(r#"{"role":"aggregate"}"#),
            Ok(RoleConfig::Aggregate {
                sensors_max: SENSORS_TRACKED_MAX
            })
        );
        assert_eq!(
            parse_config(r#"{"role":"aggregate","sensors_max":100}"#),
            Ok(RoleConfig::Aggregate { sensors_max: 100 })
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        for (config, expected) in [
            ("{}", "missing \"role\""),
            ("", "expected '{'"),
            ("null", "expected '{'"),
            (r#"{"role":"map"}"#, "not \"map\""),
            (r#"{"role":7}"#, "must be a string"),
            (
                r#"{"role":"filter","treshold":4}"#,
                "unknown field \"treshold\"",
            ),
            (r#"{"role":"filter","threshold":"4"}"#, "must be a number"),
            (
                r#"{"role":"filter","sensors_max":4}"#,
                "belongs to the aggregate",
            ),
            (
                r#"{"role":"aggregate","threshold":4}"#,
                "belongs to the filter",
            ),
            (r#"{"role":"aggregate","sensors_max":0}"#, "from 1 to"),
            (r#"{"role":"aggregate","sensors_max":2.5}"#, "from 1 to"),
            (r#"{"role":"aggregate","sensors_max":1e9}"#, "from 1 to"),
            (r#"{"role":"filter","role":"aggregate"}"#, "given twice"),
            (r#"{"role":"filter","x":{"y":1}}"#, "nested"),
            (r#"{"role":"filter"} trailing"#, "after the object"),
            (r#"{"role":"filter""#, "expected ',' or '}'"),
        ] {
            match parse_config(config) {
                Err(reason) => assert!(
                    reason.contains(expected),
                    "{config}: {reason:?} does not say {expected:?}"
                ),
                Ok(parsed) => panic!("{config} parsed as {parsed:?}"),
            }
        }
    }

    /// A context that records what was emitted.
    #[derive(Default)]
    struct Recorder {
        emitted: Vec<(String, Bytes)>,
        resources: Resources,
    }

    impl Context for Recorder {
        fn emit(&mut self, key: &str, value: Bytes) -> Result<(), UdlError> {
            self.emitted.push((key.to_string(), value));
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
        fn emit_device(&mut self, _key: &str, _view: &DeviceView) -> Result<(), UdlError> {
            Err(UdlError::new("not in this test"))
        }
    }

    fn input<'a>(pathname: &'a str, key: &'a str, blob: &'static [u8]) -> Input<'a> {
        Input {
            pathname,
            key,
            version: 1,
            timestamp_us: 0,
            previous_version: None,
            previous_version_by_key: None,
            message_id: MessageId { client: 1, seq: 1 },
            sender: 0,
            blob: Bytes::from_static(blob),
            device: None,
        }
    }

    #[test]
    fn filter_passes_the_input_buffer_itself() {
        let udl = EdgeCloud::new(r#"{"role":"filter","threshold":40}"#).expect("config");
        let mut ctx = Recorder::default();
        let hot = input("/sensors/", "/sensors/t1", b"17 42.5");
        udl.handle(&hot, &mut ctx).expect("handled");
        udl.handle(&input("/sensors/", "/sensors/t1", b"18 12"), &mut ctx)
            .expect("handled");
        assert_eq!(ctx.emitted.len(), 1, "the cold reading was passed on");
        let (key, value) = &ctx.emitted[0];
        assert_eq!(key, "t1");
        assert_eq!(value.as_ptr(), hot.blob.as_ptr(), "the reading was copied");
        assert_eq!(&value[..], b"17 42.5");
        let bad = input("/sensors/", "/sensors/t1", b"hot");
        let err = udl.handle(&bad, &mut ctx).expect_err("garbage passed");
        assert!(err.message.contains("/sensors/t1"), "{err}");
    }

    #[test]
    fn aggregate_emits_running_statistics() {
        let udl = EdgeCloud::new(r#"{"role":"aggregate","sensors_max":2}"#).expect("config");
        let mut ctx = Recorder::default();
        for (key, blob) in [
            ("/ingest/t1", &b"1 40"[..]),
            ("/ingest/t2", b"1 7"),
            ("/ingest/t1", b"2 50"),
            ("/ingest/t1", b"2 50"),
            ("/ingest/t1", b"3 45.5"),
        ] {
            let blob: &'static [u8] = blob;
            udl.handle(&input("/ingest/", key, blob), &mut ctx)
                .expect("handled");
        }
        let emitted: Vec<(&str, &[u8])> = ctx
            .emitted
            .iter()
            .map(|(key, value)| (key.as_str(), &value[..]))
            .collect();
        assert_eq!(
            emitted,
            [
                ("t1", &b"1 40 count=1 mean=40"[..]),
                ("t2", b"1 7 count=1 mean=7"),
                ("t1", b"2 50 count=2 mean=45"),
                ("t1", b"3 45.5 count=3 mean=45.166666666666664"),
            ]
        );
        let third = input("/ingest/", "/ingest/t3", b"1 1");
        let err = udl.handle(&third, &mut ctx).expect_err("a third sensor");
        assert!(err.message.contains("sensors_max"), "{err}");
    }
}
