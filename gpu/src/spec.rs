//! Configuration at the edge: the `gpu_cache = { device = 0, capacity = "8GiB" }` pool
//! option and the byte sizes it is written in. These are the only serde types here; they
//! serialize as they are written (a byte size as its [`fmt::Display`] text), so a config
//! written back out parses to the same values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ByteSizeProblem, GpuError};

/// A number of bytes, written as an integer (`1000000`) or a string with an optional unit:
/// `"1000000"`, `"512MiB"`, `"8 GiB"`, `"2GB"`. Binary units (KiB, MiB, GiB, TiB) are
/// powers of 1024, decimal ones (kB, MB, GB, TB) powers of 1000; units are matched without
/// regard to case. Fractions are refused rather than rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

const UNITS: [(&str, u64); 10] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("", 1),
];

impl ByteSize {
    pub const fn from_bytes(bytes: u64) -> Self {
        ByteSize(bytes)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = GpuError;

    fn from_str(input: &str) -> Result<Self, GpuError> {
        let invalid = |problem| GpuError::InvalidByteSize {
            input: input.to_owned(),
            problem,
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(invalid(ByteSizeProblem::Empty));
        }
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, rest) = text.split_at(digits_end);
        if digits.is_empty() {
            return Err(invalid(ByteSizeProblem::NotANumber));
        }
        if rest.starts_with(['.', ',']) {
            return Err(invalid(ByteSizeProblem::Fractional));
        }
        let number: u64 = digits
            .parse()
            .map_err(|_| invalid(ByteSizeProblem::Overflow))?;
        let unit = rest.trim_start().to_ascii_lowercase();
        let Some((_, multiplier)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(invalid(ByteSizeProblem::UnknownUnit));
        };
        number
            .checked_mul(*multiplier)
            .map(ByteSize)
            .ok_or_else(|| invalid(ByteSizeProblem::Overflow))
    }
}

/// Prints the largest binary unit that divides the size exactly: `8GiB`, `1000000B`.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, multiplier) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 != 0 && self.0.is_multiple_of(multiplier) {
                return write!(f, "{}{name}", self.0 / multiplier);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Integer(u64),
            Text(String),
        }
        match Written::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "a byte size is a non-negative integer or a string like \"8GiB\"",
            )
        })? {
            Written::Integer(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A pool's `gpu_cache` option: keep the pool's objects cached on GPU `device`, in at most
/// `capacity` bytes. Unknown fields and a zero capacity are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "GpuCacheSpecFields")]
pub struct GpuCacheSpec {
    pub device: u32,
    pub capacity: ByteSize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuCacheSpecFields {
    device: u32,
    capacity: ByteSize,
}

impl TryFrom<GpuCacheSpecFields> for GpuCacheSpec {
    type Error = GpuError;

    fn try_from(fields: GpuCacheSpecFields) -> Result<Self, GpuError> {
        GpuCacheSpec::new(fields.device, fields.capacity)
    }
}

impl GpuCacheSpec {
    /// A spec, refusing a zero capacity (a cache that can hold nothing is a mistake).
    pub fn new(device: u32, capacity: ByteSize) -> Result<Self, GpuError> {
        if capacity.bytes() == 0 {
            return Err(GpuError::InvalidCacheSpec {
                reason: "capacity must be more than 0 bytes".to_owned(),
            });
        }
        Ok(GpuCacheSpec { device, capacity })
    }
}
