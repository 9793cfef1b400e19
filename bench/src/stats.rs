//! What each node measures in the measured window, how it reports it to the parent, and
//! how the parent aggregates the nodes' reports.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Microseconds since the UNIX epoch. Every process of a run is on one machine, so send
/// stamps taken in one process compare with receive stamps taken in another.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU time this process has used (user + system, all threads), from `/proc/self/stat`;
/// `None` where that is unavailable.
pub fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Measures the CPU a process uses between `new` and `cores`.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    cpu_s: Option<f64>,
    at: std::time::Instant,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter::new()
    }
}

impl CpuMeter {
    pub fn new() -> Self {
        CpuMeter {
            cpu_s: process_cpu_s(),
            at: std::time::Instant::now(),
        }
    }

    /// Cores used on average since `new` (0 where unknown).
    pub fn cores(&self) -> f64 {
        let elapsed = self.at.elapsed().as_secs_f64();
        match (self.cpu_s, process_cpu_s()) {
            (Some(then), Some(now)) if elapsed > 0.0 => (now - then).max(0.0) / elapsed,
            _ => 0.0,
        }
    }
}

/// Bytes of every payload taken by the send stamp.
pub const STAMP_BYTES: usize = 8;

/// A payload of `size` bytes whose first 8 bytes are the send time (µs, little endian).
pub fn stamped_payload(size: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(size);
    payload.put_u64_le(now_us());
    payload.resize(size, 0x5a);
    payload.freeze()
}

/// The send stamp of a payload, if it has one.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    payload
        .get(..STAMP_BYTES)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// The measured window, `[start_us, end_us)` on the wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_us: u64,
    pub end_us: u64,
}

impl Window {
    pub fn contains(&self, at_us: u64) -> bool {
        (self.start_us..self.end_us).contains(&at_us)
    }
}

/// One node's (or one connection's) counts of deliveries in the measured window.
#[derive(Debug)]
pub struct Recorder {
    /// Deliveries of messages another node sent.
    pub deliveries: u64,
    pub bytes: u64,
    /// Deliveries of this node's own messages (Squall delivers them too; not in the rates).
    pub self_deliveries: u64,
    /// Messages this node sent (stamped) in the window.
    pub sent: u64,
    /// Delivery latency of other nodes' messages, µs.
    pub latency: Histogram<u64>,
    /// CPU this process used from the start of sending to the end of the window, in
    /// cores (1.0 = one core busy all the time).
    pub cpu_cores: f64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            deliveries: 0,
            bytes: 0,
            self_deliveries: 0,
            sent: 0,
            latency: new_histogram(),
            cpu_cores: 0.0,
        }
    }

    /// Records one delivery seen at `at_us` if it falls in `window`.
    pub fn delivered(&mut self, window: Window, at_us: u64, payload: &[u8], remote: bool) {
        if !window.contains(at_us) {
            return;
        }
        if !remote {
            self.self_deliveries += 1;
            return;
        }
        self.deliveries += 1;
        self.bytes += payload.len() as u64;
        if let Some(sent_us) = stamp_of(payload) {
            self.latency
                .saturating_record(at_us.saturating_sub(sent_us));
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.deliveries += other.deliveries;
        self.bytes += other.bytes;
        self.self_deliveries += other.self_deliveries;
        self.sent += other.sent;
        self.cpu_cores += other.cpu_cores;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    pub fn report(&self, node: usize) -> NodeReport {
        NodeReport {
            node,
            deliveries: self.deliveries,
            bytes: self.bytes,
            self_deliveries: self.self_deliveries,
            sent: self.sent,
            cpu_cores: self.cpu_cores,
            p50_us: self.latency.value_at_quantile(0.50),
            p99_us: self.latency.value_at_quantile(0.99),
            latency: self
                .latency
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }
}

/// Latencies above this (an hour, in µs) are recorded as this.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// A histogram of 1 µs to [`LATENCY_MAX_US`] with 3 significant digits. (Auto-resizing
/// histograms would not resize for `saturating_record`, which clamps instead.)
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid bounds and precision")
}

/// The line a node prints (after `STATS `) at the end of the measured window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    pub node: usize,
    pub deliveries: u64,
    pub bytes: u64,
    pub self_deliveries: u64,
    pub sent: u64,
    #[serde(default)]
    pub cpu_cores: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// The latency histogram as (value µs, count) pairs, so the parent can merge.
    pub latency: Vec<(u64, u64)>,
}

/// One system's figures for one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// Deliveries of other nodes' messages per second, averaged over the receivers.
    pub ops_per_s: f64,
    pub bytes_per_s: f64,
    /// Latency percentiles over the merged histogram of every receiver.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Messages sent per second by all senders together.
    pub sent_per_s: f64,
    pub receivers: usize,
    /// CPU used by all nodes together while sending, in cores.
    pub cpu_cores: f64,
}

impl Aggregate {
    /// CPU time (all nodes) per delivery (at one receiver), µs: the cost of moving one
    /// message to one receiver, sending included. Unlike the rates, it hardly depends on
    /// how much of a shared machine the run got.
    pub fn cpu_us_per_op(&self) -> f64 {
        let deliveries_per_s = self.ops_per_s * self.receivers as f64;
        if deliveries_per_s > 0.0 {
            self.cpu_cores * 1e6 / deliveries_per_s
        } else {
            0.0
        }
    }
}

/// Aggregates the reports of `receivers` (node indices) over a window of `seconds`.
pub fn aggregate(reports: &[NodeReport], receivers: &[usize], seconds: f64) -> Aggregate {
    let mut merged = new_histogram();
    let (mut deliveries, mut bytes, mut counted) = (0u64, 0u64, 0usize);
    for report in reports.iter().filter(|r| receivers.contains(&r.node)) {
        deliveries += report.deliveries;
        bytes += report.bytes;
        counted += 1;
        for &(value, count) in &report.latency {
            merged.saturating_record_n(value, count);
        }
    }
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let per_receiver = |total: u64| {
        if counted == 0 || seconds <= 0.0 {
            0.0
        } else {
            total as f64 / counted as f64 / seconds
        }
    };
    Aggregate {
        ops_per_s: per_receiver(deliveries),
        bytes_per_s: per_receiver(bytes),
        p50_us: merged.value_at_quantile(0.50),
        p99_us: merged.value_at_quantile(0.99),
        sent_per_s: if seconds > 0.0 {
            sent as f64 / seconds
        } else {
            0.0
        },
        receivers: counted,
        cpu_cores: reports.iter().map(|r| r.cpu_cores).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let before = now_us();
        let payload = stamped_payload(1024);
        assert_eq!(payload.len(), 1024);
        let stamp = stamp_of(&payload).expect("stamped");
        assert!(stamp >= before && stamp <= now_us());
        assert_eq!(stamp_of(&payload[..4]), None);
    }

    #[test]
    fn measures_cpu() {
        let meter = CpuMeter::new();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let cores = meter.cores();
        if process_cpu_s().is_some() {
            assert!(cores > 0.02 && cores < 64.0, "{cores}");
        }
    }

    #[test]
    fn records_only_inside_the_window() {
        let window = Window {
            start_us: 1_000,
            end_us: 2_000,
        };
        let mut rec = Recorder::new();
        let mut payload = vec![0u8; 16];
        payload[..8].copy_from_slice(&900u64.to_le_bytes());
        rec.delivered(window, 999, &payload, true);
        rec.delivered(window, 2_000, &payload, true);
        rec.delivered(window, 1_000, &payload, true);
        rec.delivered(window, 1_500, &payload, false);
        assert_eq!((rec.deliveries, rec.bytes, rec.self_deliveries), (1, 16, 1));
        assert_eq!(rec.latency.value_at_quantile(0.5), 100);
        // Large latencies are kept, not clamped.
        let always = Window {
            start_us: 0,
            end_us: u64::MAX,
        };
        let mut rec = Recorder::new();
        payload[..8].copy_from_slice(&1_000u64.to_le_bytes());
        rec.delivered(always, 5_001_000, &payload, true);
        let max = rec.latency.value_at_quantile(1.0);
        assert!((4_995_000..=5_005_000).contains(&max), "{max}");
    }

    #[test]
    fn aggregates_per_receiver_and_merges_latency() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for _ in 0..90 {
            a.latency.saturating_record(10);
        }
        for _ in 0..10 {
            b.latency.saturating_record(1_000_000);
        }
        a.deliveries = 200;
        a.bytes = 2_000;
        b.deliveries = 100;
        b.bytes = 1_000;
        let mut r0 = a.report(0);
        r0.sent = 50;
        let r1 = b.report(1);
        let agg = aggregate(&[r0.clone(), r1.clone()], &[0, 1], 2.0);
        assert_eq!(agg.receivers, 2);
        assert!((agg.ops_per_s - 75.0).abs() < 1e-9);
        assert!((agg.bytes_per_s - 750.0).abs() < 1e-9);
        assert!((agg.sent_per_s - 25.0).abs() < 1e-9);
        assert_eq!(agg.p50_us, 10);
        assert!(
            (999_000..=1_001_000).contains(&agg.p99_us),
            "{}",
            agg.p99_us
        );
        // Node 0 is no receiver (e.g. the only sender): only node 1 counts.
        let agg = aggregate(&[r0, r1], &[1], 1.0);
        assert_eq!(agg.receivers, 1);
        assert!((agg.ops_per_s - 100.0).abs() < 1e-9);
        let line = serde_json::to_string(&a.report(3)).expect("serializes");
        let back: NodeReport = serde_json::from_str(&line).expect("parses");
        assert_eq!(back, a.report(3));
    }
}
