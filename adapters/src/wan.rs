//! The WAN outbox: DFG outputs bound for another cluster (`"cloud:/ingest/": "put"`).
//!
//! Virtual synchrony never stretches across a WAN, so another site is another cluster,
//! reached as a client. An output for it is first made durable here: the emitter writes
//! it as an [`Op::OutboxPut`](squall_kvs::Op::OutboxPut) into the reserved persistent
//! pool [`OUTBOX_POOL`](squall_kvs::OUTBOX_POOL), routed by the remote key, so it is
//! ordered, logged and replicated in its shard like any persistent put and answered once
//! durable on every replica. Every replica queues it ([`Outboxes`]); the shard's first
//! member forwards the queue front in batches, one [`Forwarder`] task per remote site,
//! and once the remote cluster applied a batch, multicasts an
//! [`Op::OutboxDone`](squall_kvs::Op::OutboxDone) in the shard, on which every replica
//! drops it. A failed-over forwarder starts again at the queue front.
//!
//! **Exactly once.** A remote put carries a message id derived from this cluster, the
//! outbox shard and the entry's version (its place in the shard's order): re-sending
//! (a retry, or a new forwarder after a failure) is applied once by the remote store,
//! whose retry memory holds `limits.dedup_per_client_max` ids per client; at most one
//! batch (`wan.batch_max`, at most half of that) is ever unacknowledged. Remote
//! `trigger_put`s are not stored, so nothing de-duplicates them: at least once.
//!
//! **Per-key order.** One remote key's entries share an outbox shard (they are routed by
//! it), and batches go one after another. In a batch, the puts of one remote shard go in
//! one `WriteMany` request, multicast in order by the node that takes it, which sends
//! nothing after a write it refused: what was applied is a prefix, and the retry sends
//! the rest in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use squall_kvs::{Condition, MessageId, Op};
use squall_platform::Version;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::client::{Client, ClientError, Policy, now_us};
use crate::config::{Config, OutboxFull, Remote};
use crate::wire::WRITE_MANY_MAX;

/// How often the service looks for outbox work it could not start at once (a forwarder
/// that was busy) and refreshes the outbox gauges.
pub const OUTBOX_TICK: Duration = Duration::from_millis(100);
/// One round trip of a batch may take this long before the link counts as down.
pub const FORWARD_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches queued for one site's forwarder (the service builds the next batch of a
/// shard only when its last one is done, so this bounds shards waiting, not entries).
pub const FORWARD_QUEUE_MAX: usize = 64;
/// The first retry pause after a failed round trip; it doubles up to
/// `wan.retry_backoff_max_ms`.
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// Marks the client ids of forwarded puts (the top bit is the nodes' own, the next one
/// UDL outputs').
const WAN_CLIENT_BIT: u64 = 1 << 61;

/// The WAN settings the service needs.
#[derive(Clone, Debug)]
pub struct WanConfig {
    /// Names this cluster in the message ids of what it forwards.
    pub origin: String,
    pub remotes: Vec<Remote>,
    pub outbox_subgroup: u32,
    pub entries_max: usize,
    pub bytes_max: usize,
    pub full: OutboxFull,
    pub batch_max: usize,
    pub batch_bytes_max: usize,
    pub retry_backoff_max: Duration,
    /// LZ4-compress batches where that saves bytes.
    pub compress: bool,
}

impl WanConfig {
    /// `None` when the config names no remote cluster.
    pub fn from_config(config: &Config) -> Option<WanConfig> {
        let outbox_subgroup = config.outbox_subgroup()?;
        if config.remotes.is_empty() {
            return None;
        }
        let origin = match &config.site {
            Some(site) => site.name.clone(),
            None => format!("cluster-{}", config.cluster.id),
        };
        Some(WanConfig {
            origin,
            remotes: config.remotes.clone(),
            outbox_subgroup,
            entries_max: config.wan.outbox_entries_max,
            bytes_max: config.wan.outbox_bytes_max,
            full: config.wan.outbox_full,
            batch_max: config.wan.batch_max,
            batch_bytes_max: config.wan.batch_bytes_max,
            retry_backoff_max: Duration::from_millis(config.wan.retry_backoff_max_ms),
            compress: config.wan.compress,
        })
    }

    pub fn remote(&self, site: &str) -> Option<&Remote> {
        self.remotes.iter().find(|r| r.name == site)
    }
}

/// One queued output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its place in the outbox shard's order.
    pub version: Version,
    pub timestamp_us: u64,
    pub trigger: bool,
    /// The key at the remote cluster.
    pub key: String,
    /// Shares the delivered buffer.
    pub blob: Bytes,
}

#[derive(Debug, Default)]
struct SiteQueue {
    entries: VecDeque<OutboxEntry>,
    bytes: usize,
    /// The batch being forwarded ends below this version (an `OutboxDone` covering it
    /// ends the batch).
    in_flight: Option<u64>,
}

/// Entries waiting for one site, over the shards this node holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub entries: usize,
    pub bytes: usize,
    /// Timestamp of the oldest entry (µs since the epoch).
    pub oldest_us: Option<u64>,
}

/// The outbox queues of the shards this node holds: `(subgroup, shard)` → site → queue.
/// Identical at every replica of a shard (built from the shard's order), apart from
/// which batch is in flight.
#[derive(Debug, Default)]
pub struct Outboxes {
    shards: HashMap<(u32, u32), BTreeMap<String, SiteQueue>>,
}

/// Why an outbox refuses another entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub site: String,
    pub entries: usize,
    pub bytes: usize,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the WAN outbox towards site `{}` is full ({} entries, {} bytes waiting); \
             retry once the link drains it",
            self.site, self.entries, self.bytes
        )
    }
}

/// A batch for a forwarder: consecutive entries of one outbox shard and site.
#[derive(Debug)]
pub struct Batch {
    pub subgroup: u32,
    pub shard: u32,
    pub site: String,
    /// Every entry is below this version.
    pub below: u64,
    /// The message-id client of every entry (the seq is the entry's version).
    pub client: u64,
    pub entries: Vec<OutboxEntry>,
}

/// A forwarder's report: the remote cluster applied everything of the batch.
#[derive(Debug)]
pub struct Forwarded {
    pub subgroup: u32,
    pub shard: u32,
    pub site: String,
    pub below: u64,
}

impl Outboxes {
    pub fn push(&mut self, subgroup: u32, shard: u32, site: &str, entry: OutboxEntry) {
        let queue = self
            .shards
            .entry((subgroup, shard))
            .or_default()
            .entry(site.to_string())
            .or_default();
        debug_assert!(
            queue
                .entries
                .back()
                .is_none_or(|e| e.version < entry.version),
            "outbox entries are queued in the shard's order"
        );
        queue.bytes += entry.blob.len();
        queue.entries.push_back(entry);
    }

    /// Every entry of one shard, by site (in name order), each site's in order: what a
    /// checkpoint of the shard keeps.
    pub fn entries(&self, subgroup: u32, shard: u32) -> Vec<(String, OutboxEntry)> {
        self.shards
            .get(&(subgroup, shard))
            .into_iter()
            .flat_map(|sites| {
                sites.iter().flat_map(|(site, queue)| {
                    queue.entries.iter().map(|e| (site.clone(), e.clone()))
                })
            })
            .collect()
    }

    /// Forgets one shard's entries (before it is rebuilt from its log or a checkpoint).
    pub fn clear(&mut self, subgroup: u32, shard: u32) {
        self.shards.remove(&(subgroup, shard));
    }

    /// Drops the entries below `below` (the remote cluster applied them). Returns how
    /// many were dropped.
    pub fn done(&mut self, subgroup: u32, shard: u32, site: &str, below: u64) -> usize {
        let Some(queue) = self
            .shards
            .get_mut(&(subgroup, shard))
            .and_then(|sites| sites.get_mut(site))
        else {
            return 0;
        };
        let mut dropped = 0;
        while queue.entries.front().is_some_and(|e| e.version.0 < below) {
            if let Some(e) = queue.entries.pop_front() {
                queue.bytes -= e.blob.len();
                dropped += 1;
            }
        }
        if queue.in_flight.is_some_and(|end| end <= below) {
            queue.in_flight = None;
        }
        dropped
    }

    /// Whether one more entry of `bytes` fits the outbox of `site` in this shard.
    pub fn room(
        &self,
        subgroup: u32,
        shard: u32,
        site: &str,
        bytes: usize,
        cfg: &WanConfig,
    ) -> Result<(), Full> {
        let Some(queue) = self
            .shards
            .get(&(subgroup, shard))
            .and_then(|sites| sites.get(site))
        else {
            return Ok(());
        };
        if queue.entries.len() >= cfg.entries_max || queue.bytes + bytes > cfg.bytes_max {
            return Err(Full {
                site: site.to_string(),
                entries: queue.entries.len(),
                bytes: queue.bytes,
            });
        }
        Ok(())
    }

    /// Keeps only the shards `keep` says this node still holds.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, u32) -> bool) {
        self.shards.retain(|(g, s), _| keep(*g, *s));
    }

    /// Forgets every batch in flight (a view change: a new forwarder may have started).
    pub fn clear_in_flight(&mut self) {
        for sites in self.shards.values_mut() {
            for queue in sites.values_mut() {
                queue.in_flight = None;
            }
        }
    }

    /// A batch that could not be handed over or whose end could not be announced: it is
    /// built again from the queue front.
    pub fn unmark(&mut self, subgroup: u32, shard: u32, site: &str) {
        if let Some(queue) = self
            .shards
            .get_mut(&(subgroup, shard))
            .and_then(|sites| sites.get_mut(site))
        {
            queue.in_flight = None;
        }
    }

    /// The next batch of every shard this node forwards (`leads`) and site with entries
    /// and nothing in flight, marked in flight. A batch starts at the queue front, holds
    /// at most `batch_max` entries and `batch_bytes_max` bytes (one entry at least); one
    /// key's entries in it keep their order (see [`Forwarder`]).
    pub fn next_batches(
        &mut self,
        mut leads: impl FnMut(u32, u32) -> bool,
        cfg: &WanConfig,
    ) -> Vec<Batch> {
        let mut batches = Vec::new();
        for (&(subgroup, shard), sites) in &mut self.shards {
            if !leads(subgroup, shard) {
                continue;
            }
            for (site, queue) in sites.iter_mut() {
                if queue.in_flight.is_some() || queue.entries.is_empty() {
                    continue;
                }
                let mut entries: Vec<OutboxEntry> = Vec::new();
                let mut bytes = 0usize;
                for e in &queue.entries {
                    if entries.len() >= cfg.batch_max
                        || (!entries.is_empty() && bytes + e.blob.len() > cfg.batch_bytes_max)
                    {
                        break;
                    }
                    bytes += e.blob.len();
                    entries.push(e.clone());
                }
                let Some(last) = entries.last() else {
                    continue;
                };
                let below = last.version.0 + 1;
                queue.in_flight = Some(below);
                batches.push(Batch {
                    subgroup,
                    shard,
                    site: site.clone(),
                    below,
                    client: forward_client(&cfg.origin, subgroup, shard),
                    entries,
                });
            }
        }
        batches
    }

    /// Entries waiting per site, over the shards this node holds.
    pub fn depth(&self) -> BTreeMap<String, Depth> {
        let mut out: BTreeMap<String, Depth> = BTreeMap::new();
        for sites in self.shards.values() {
            for (site, queue) in sites {
                let d = out.entry(site.clone()).or_default();
                d.entries += queue.entries.len();
                d.bytes += queue.bytes;
                if let Some(front) = queue.entries.front() {
                    d.oldest_us = Some(
                        d.oldest_us
                            .map_or(front.timestamp_us, |o| o.min(front.timestamp_us)),
                    );
                }
            }
        }
        out
    }
}

/// The message-id client of what one outbox shard forwards: the same for every
/// forwarder of that shard (so a failed-over one re-sends under the ids the remote store
/// remembers), distinct between clusters and shards.
pub fn forward_client(origin: &str, subgroup: u32, shard: u32) -> u64 {
    let mut bytes = Vec::with_capacity(origin.len() + 16);
    bytes.extend_from_slice(b"squall-wan\0");
    bytes.extend_from_slice(origin.as_bytes());
    bytes.extend_from_slice(&subgroup.to_le_bytes());
    bytes.extend_from_slice(&shard.to_le_bytes());
    WAN_CLIENT_BIT | (xxhash_rust::xxh3::xxh3_64(&bytes) >> 3)
}

/// What the dashboard and `/api/v1/node` show of one link.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct LinkStatus {
    pub site: String,
    /// `idle` (nothing sent yet), `up`, `down`.
    pub state: String,
    pub last_error: Option<String>,
    /// Entries the remote cluster applied, since this node started.
    pub forwarded: u64,
    pub failures: u64,
    /// The last batch's round trip.
    pub last_round_trip_ms: Option<f64>,
    pub outbox_entries: usize,
    pub outbox_bytes: usize,
    pub oldest_age_s: Option<f64>,
}

/// Links by site, shared with the HTTP server.
pub type SharedLinks = Arc<Mutex<BTreeMap<String, LinkStatus>>>;

/// The WAN series on `/metrics`.
#[derive(Clone, Debug)]
pub struct WanMetrics {
    pub outbox_entries: IntGaugeVec,
    pub outbox_bytes: IntGaugeVec,
    pub oldest_age_seconds: GaugeVec,
    pub link_up: IntGaugeVec,
    pub forwarded: IntCounterVec,
    pub failures: IntCounterVec,
    pub batch_seconds: HistogramVec,
}

impl WanMetrics {
    pub fn new(registry: &prometheus::Registry) -> Result<WanMetrics, prometheus::Error> {
        let site = &["site"];
        let m = WanMetrics {
            outbox_entries: IntGaugeVec::new(
                Opts::new(
                    "squall_wan_outbox_entries",
                    "Outputs waiting in this node's WAN outbox shards, per remote site",
                ),
                site,
            )?,
            outbox_bytes: IntGaugeVec::new(
                Opts::new(
                    "squall_wan_outbox_bytes",
                    "Bytes waiting in this node's WAN outbox shards, per remote site",
                ),
                site,
            )?,
            oldest_age_seconds: GaugeVec::new(
                Opts::new(
                    "squall_wan_outbox_oldest_age_seconds",
                    "Age of the oldest output waiting for a remote site (0 when none)",
                ),
                site,
            )?,
            link_up: IntGaugeVec::new(
                Opts::new(
                    "squall_wan_link_up",
                    "1 while the last round trip to the remote site succeeded",
                ),
                site,
            )?,
            forwarded: IntCounterVec::new(
                Opts::new(
                    "squall_wan_forwarded_total",
                    "Outputs this node forwarded and the remote site applied",
                ),
                site,
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "squall_wan_forward_failures_total",
                    "Failed round trips to the remote site (each is retried)",
                ),
                site,
            )?,
            batch_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "squall_wan_batch_seconds",
                    "Round trip of one forwarded batch, until the remote site applied it",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                site,
            )?,
        };
        registry.register(Box::new(m.outbox_entries.clone()))?;
        registry.register(Box::new(m.outbox_bytes.clone()))?;
        registry.register(Box::new(m.oldest_age_seconds.clone()))?;
        registry.register(Box::new(m.link_up.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.batch_seconds.clone()))?;
        Ok(m)
    }
}

/// The forwarders of a node, one per remote site.
#[derive(Debug)]
pub struct Forwarders {
    senders: HashMap<String, mpsc::Sender<Batch>>,
}

impl Forwarders {
    /// Starts one forwarder task per remote; each reports applied batches on `results`.
    pub fn start(
        cfg: &WanConfig,
        results: mpsc::Sender<Forwarded>,
        links: SharedLinks,
        metrics: Option<WanMetrics>,
    ) -> Forwarders {
        let mut senders = HashMap::new();
        for remote in &cfg.remotes {
            let (tx, rx) = mpsc::channel(FORWARD_QUEUE_MAX);
            if let Ok(mut links) = links.lock() {
                links.insert(
                    remote.name.clone(),
                    LinkStatus {
                        site: remote.name.clone(),
                        state: "idle".into(),
                        ..LinkStatus::default()
                    },
                );
            }
            let forwarder = Forwarder {
                remote: remote.clone(),
                client: None,
                links: Arc::clone(&links),
                metrics: metrics.clone(),
                backoff_max: cfg.retry_backoff_max,
                compress: cfg.compress,
            };
            tokio::spawn(forwarder.run(rx, results.clone()));
            senders.insert(remote.name.clone(), tx);
        }
        Forwarders { senders }
    }

    /// Hands `batch` to its site's forwarder; gives it back when there is none or its
    /// queue is full (the service tries again later).
    pub fn send(&self, batch: Batch) -> Result<(), Batch> {
        match self.senders.get(&batch.site) {
            Some(tx) => tx.try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            }),
            None => Err(batch),
        }
    }
}

/// Forwards one site's batches, in the order it receives them, until each is applied.
struct Forwarder {
    remote: Remote,
    client: Option<Client>,
    links: SharedLinks,
    metrics: Option<WanMetrics>,
    backoff_max: Duration,
    compress: bool,
}

impl Forwarder {
    async fn run(mut self, mut batches: mpsc::Receiver<Batch>, results: mpsc::Sender<Forwarded>) {
        while let Some(batch) = batches.recv().await {
            self.forward(&batch).await;
            let done = Forwarded {
                subgroup: batch.subgroup,
                shard: batch.shard,
                site: batch.site,
                below: batch.below,
            };
            if results.send(done).await.is_err() {
                return;
            }
        }
    }

    /// Returns once the remote cluster applied every entry: failed entries are retried
    /// (with their message ids) after a pause that doubles up to `backoff_max`.
    async fn forward(&mut self, batch: &Batch) {
        let mut pending: Vec<usize> = (0..batch.entries.len()).collect();
        let mut pause = RETRY_BACKOFF_FIRST;
        let started = Instant::now();
        loop {
            let error = match self.attempt(batch, &mut pending).await {
                Ok(()) => {
                    self.succeeded(batch.entries.len(), started.elapsed());
                    return;
                }
                Err(error) => error,
            };
            self.failed(&error);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.backoff_max);
        }
    }

    /// One round. Puts go as one [`Client::write_many`] per remote shard (in outbox
    /// order, so one key's entries keep theirs: the remote node multicasts them in order
    /// and stops at the first it refuses), all shards at once; `trigger_put`s one after
    /// another. Applied entries leave `pending`.
    async fn attempt(&mut self, batch: &Batch, pending: &mut Vec<usize>) -> Result<(), String> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let connect = Client::connect_via(
                    &self.remote.addresses,
                    self.remote.token.clone(),
                    Policy::RoundRobin,
                    self.remote.address_map.clone().into_iter().collect(),
                );
                match tokio::time::timeout(FORWARD_ATTEMPT_TIMEOUT, connect).await {
                    Ok(Ok(c)) => {
                        info!(site = %self.remote.name, "connected to the remote cluster");
                        self.client = Some(c.clone());
                        c
                    }
                    Ok(Err(e)) => return Err(format!("connecting: {e}")),
                    Err(_) => return Err("connecting: timed out".into()),
                }
            }
        };
        // Group the puts by the node their shard's writes go to (unknown: by key).
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut triggers: Vec<usize> = Vec::new();
        for &i in pending.iter() {
            let e = &batch.entries[i];
            if e.trigger {
                triggers.push(i);
                continue;
            }
            let target = client
                .write_target(&e.key)
                .unwrap_or_else(|| format!("key {}", e.key));
            match groups.iter_mut().find(|(t, _)| *t == target) {
                Some((_, members)) => members.push(i),
                None => groups.push((target, vec![i])),
            }
        }
        let mut calls: JoinSet<Vec<(usize, Result<(), ClientError>)>> = JoinSet::new();
        for (_, members) in groups {
            for chunk in members.chunks(WRITE_MANY_MAX) {
                let c = client.clone();
                let chunk = chunk.to_vec();
                let ops: Vec<Op> = chunk
                    .iter()
                    .map(|&i| {
                        let e = &batch.entries[i];
                        Op::Put {
                            id: MessageId {
                                client: batch.client,
                                seq: e.version.0,
                            },
                            hlc_us: now_us(),
                            condition: Condition::Always,
                            // The client names the pool's current generation.
                            pool_generation: 0,
                            key: e.key.clone(),
                            blob: e.blob.clone(),
                        }
                    })
                    .collect();
                let route = batch.entries[chunk[0]].key.clone();
                let compress = self.compress;
                calls.spawn(async move {
                    match c.write_many(&ops, &route, compress).await {
                        Ok(answers) => chunk
                            .into_iter()
                            .zip(answers)
                            .map(|(i, answer)| (i, answer.map(drop)))
                            .collect(),
                        Err(e) => chunk.into_iter().map(|i| (i, Err(e.clone()))).collect(),
                    }
                });
            }
        }
        if !triggers.is_empty() {
            let c = client.clone();
            let entries: Vec<(usize, String, Bytes)> = triggers
                .iter()
                .map(|&i| {
                    (
                        i,
                        batch.entries[i].key.clone(),
                        batch.entries[i].blob.clone(),
                    )
                })
                .collect();
            calls.spawn(async move {
                let mut out = Vec::with_capacity(entries.len());
                for (i, key, blob) in entries {
                    out.push((i, c.trigger_put(&key, blob).await));
                }
                out
            });
        }
        let mut failed: Vec<usize> = Vec::new();
        let mut last: Option<ClientError> = None;
        let round = async {
            while let Some(joined) = calls.join_next().await {
                match joined {
                    Ok(results) => {
                        for (i, result) in results {
                            if let Err(e) = result {
                                failed.push(i);
                                last = Some(e);
                            }
                        }
                    }
                    Err(e) => {
                        // A panicked call: its entries are unknown, so the whole batch is
                        // retried (the remote side de-duplicates what was applied).
                        warn!(error = %e, "a forwarding call failed");
                        return false;
                    }
                }
            }
            true
        };
        let finished = tokio::time::timeout(FORWARD_ATTEMPT_TIMEOUT, round).await;
        match finished {
            Ok(true) => {}
            Ok(false) => return Err("a forwarding call failed".into()),
            Err(_) => {
                calls.abort_all();
                // Connections may be stuck behind a link that black-holes: start afresh.
                self.client = None;
                return Err(format!(
                    "no answer within {} s",
                    FORWARD_ATTEMPT_TIMEOUT.as_secs()
                ));
            }
        }
        failed.sort_unstable();
        *pending = failed;
        match last {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        }
    }

    fn succeeded(&self, entries: usize, round_trip: Duration) {
        let site = self.remote.name.as_str();
        if let Some(m) = &self.metrics {
            m.link_up.with_label_values(&[site]).set(1);
            m.forwarded
                .with_label_values(&[site])
                .inc_by(entries as u64);
            m.batch_seconds
                .with_label_values(&[site])
                .observe(round_trip.as_secs_f64());
        }
        if let Ok(mut links) = self.links.lock()
            && let Some(link) = links.get_mut(site)
        {
            if link.state == "down" {
                info!(site, "the link to the remote cluster is back");
            }
            link.state = "up".into();
            link.last_error = None;
            link.forwarded += entries as u64;
            link.last_round_trip_ms = Some(round_trip.as_secs_f64() * 1e3);
        }
    }

    fn failed(&self, error: &str) {
        let site = self.remote.name.as_str();
        if let Some(m) = &self.metrics {
            m.link_up.with_label_values(&[site]).set(0);
            m.failures.with_label_values(&[site]).inc();
        }
        if let Ok(mut links) = self.links.lock()
            && let Some(link) = links.get_mut(site)
        {
            if link.state != "down" {
                warn!(site, %error, "the link to the remote cluster is down; retrying");
            }
            link.state = "down".into();
            link.last_error = Some(error.to_string());
            link.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WanConfig {
        WanConfig {
            origin: "edge".into(),
            remotes: Vec::new(),
            outbox_subgroup: 1,
            entries_max: 3,
            bytes_max: 10,
            full: OutboxFull::Block,
            batch_max: 4,
            batch_bytes_max: 6,
            retry_backoff_max: Duration::from_secs(1),
            compress: true,
        }
    }

    fn entry(seq: u32, key: &str, blob: &'static [u8]) -> OutboxEntry {
        OutboxEntry {
            version: Version::new(1, seq),
            timestamp_us: u64::from(seq),
            trigger: false,
            key: key.into(),
            blob: Bytes::from_static(blob),
        }
    }

    #[test]
    fn batches_follow_the_queue_and_its_limits() {
        let cfg = cfg();
        let mut o = Outboxes::default();
        o.push(1, 0, "cloud", entry(1, "/a", b"1"));
        o.push(1, 0, "cloud", entry(2, "/b", b"2"));
        o.push(1, 0, "cloud", entry(3, "/a", b"3"));
        o.push(1, 0, "cloud", entry(4, "/c", b"4"));
        o.push(1, 0, "cloud", entry(5, "/d", b"5"));
        let batches = o.next_batches(|_, _| true, &cfg);
        assert_eq!(batches.len(), 1);
        let keys: Vec<&str> = batches[0].entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/a", "/b", "/a", "/c"],
            "the queue's order, batch_max = 4"
        );
        assert_eq!(batches[0].below, Version::new(1, 4).0 + 1);
        // In flight: nothing more until it is done.
        assert!(o.next_batches(|_, _| true, &cfg).is_empty());
        assert_eq!(o.done(1, 0, "cloud", batches[0].below), 4);
        let next = o.next_batches(|_, _| true, &cfg);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].entries[0].key, "/d");
        // Only the shards this node leads.
        o.unmark(1, 0, "cloud");
        assert!(o.next_batches(|_, _| false, &cfg).is_empty());
    }

    #[test]
    fn batches_respect_bytes_and_the_outbox_its_bounds() {
        let cfg = cfg();
        let mut o = Outboxes::default();
        o.push(1, 0, "cloud", entry(1, "/a", b"12345"));
        o.push(1, 0, "cloud", entry(2, "/b", b"12345"));
        assert!(o.room(1, 0, "cloud", 1, &cfg).is_err(), "bytes_max = 10");
        assert!(o.room(1, 0, "other", 10, &cfg).is_ok(), "per site");
        let batch = o.next_batches(|_, _| true, &cfg).remove(0);
        assert_eq!(batch.entries.len(), 1, "batch_bytes_max = 6");
        o.done(1, 0, "cloud", batch.below);
        let depth = o.depth();
        assert_eq!(
            depth["cloud"],
            Depth {
                entries: 1,
                bytes: 5,
                oldest_us: Some(2)
            }
        );
        o.push(1, 0, "cloud", entry(3, "/c", b""));
        o.push(1, 0, "cloud", entry(4, "/d", b""));
        let full = o.room(1, 0, "cloud", 0, &cfg).expect_err("entries_max = 3");
        assert_eq!(full.entries, 3);
        // A new view: shards this node left go, batches in flight are forgotten.
        o.retain(|g, _| g == 2);
        assert!(o.depth().is_empty());
    }

    #[test]
    fn forward_clients_are_stable_and_distinct() {
        let a = forward_client("edge", 1, 0);
        assert_eq!(a, forward_client("edge", 1, 0));
        assert_ne!(a, forward_client("edge", 1, 1));
        assert_ne!(a, forward_client("edge-2", 1, 0));
        assert_eq!(a & (1 << 63), 0, "never a node's own id");
    }
}
