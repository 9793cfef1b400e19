//! After a compaction (`Op::Compact`, or `Op::CompactMetadata` for the metadata) is
//! applied to a persistent shard, this node writes
//! a checkpoint of the shard ([`crate::checkpoint`]) and, once the compaction's version is
//! durable on every replica, drops the log segments nothing needs any more.
//!
//! Why wait for every replica: a total restart may cut a node's log back to what the
//! restarting members agree on, which never goes below what every replica had made
//! durable. Dropped records must stay behind that point, or a restart could leave a
//! checkpoint ahead of the log and the records between gone.
//!
//! What is dropped: the whole segments whose records are all older than both the
//! checkpoint (a replay starts after it) and the oldest version any read may still need
//! (a key's older version, read from the log). The log start marker goes to disk first,
//! then the segments, then the checkpoints older than the new one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use squall_driver::NodeHandle;
use squall_kvs::SnapshotStream;
use squall_platform::Version;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::checkpoint::Checkpoints;
use crate::wan::OutboxEntry;

/// Checkpoints written and not yet taken by the service, and log compactions queued.
pub const COMPACTION_QUEUE_MAX: usize = 64;

/// A checkpoint reached the disk (or failed to).
#[derive(Debug)]
pub struct Written {
    pub subgroup: u32,
    pub shard: u32,
    pub version: Version,
    /// Log records below this are needed by no read and no replay.
    pub needed_from: u64,
    pub result: Result<(), String>,
}

#[derive(Debug)]
struct Job {
    subgroup: u32,
    shard: u32,
    version: Version,
    needed_from: u64,
}

/// What a checkpoint holds: the store's state, the shard's outbox entries, and the
/// metadata's rebuild operations (see [`crate::checkpoint`]).
#[derive(Debug)]
pub struct Contents {
    pub stream: SnapshotStream,
    pub outbox: Vec<(String, OutboxEntry)>,
    pub rebuild: Vec<Bytes>,
}

/// A node's checkpoints and log compactions.
#[derive(Debug)]
pub struct Compactor {
    checkpoints: Option<Arc<Checkpoints>>,
    written_tx: mpsc::Sender<Written>,
    written_rx: Option<mpsc::Receiver<Written>>,
    /// Checkpoints written, waiting for their version to be durable everywhere.
    waiting: HashMap<(u32, u32), Job>,
    /// The newest checkpoint each shard's log was (or is being) compacted for: an older
    /// one written late must not move the log's start marker back.
    sent: HashMap<(u32, u32), Version>,
    jobs: Option<mpsc::Sender<Job>>,
}

impl Compactor {
    /// `checkpoints`: where they go (`None`: a node without a log compacts in memory only).
    pub fn new(checkpoints: Option<Checkpoints>) -> Compactor {
        let (written_tx, written_rx) = mpsc::channel(COMPACTION_QUEUE_MAX);
        Compactor {
            checkpoints: checkpoints.map(Arc::new),
            written_tx,
            written_rx: Some(written_rx),
            waiting: HashMap::new(),
            sent: HashMap::new(),
            jobs: None,
        }
    }

    pub fn checkpoints(&self) -> Option<&Arc<Checkpoints>> {
        self.checkpoints.as_ref()
    }

    /// Starts the task that compacts logs, one job at a time; returns where written
    /// checkpoints are reported (once).
    pub fn start(&mut self, handle: NodeHandle) -> Option<mpsc::Receiver<Written>> {
        if let Some(checkpoints) = &self.checkpoints {
            let (tx, rx) = mpsc::channel(COMPACTION_QUEUE_MAX);
            tokio::spawn(compact_logs(Arc::clone(checkpoints), handle, rx));
            self.jobs = Some(tx);
        }
        self.written_rx.take()
    }

    /// Writes a checkpoint of the state `stream` was taken at (`version`), off the async
    /// threads; the outcome comes back through [`Compactor::start`]'s receiver.
    pub fn checkpoint(
        &self,
        subgroup: u32,
        shard: u32,
        version: Version,
        contents: Contents,
        history_floor: Option<Version>,
    ) {
        let Some(checkpoints) = self.checkpoints.clone() else {
            return;
        };
        let written = self.written_tx.clone();
        let needed_from = history_floor.map_or(u64::MAX, |v| v.0).min(version.0 + 1);
        tokio::task::spawn_blocking(move || {
            let result = checkpoints
                .write(
                    subgroup,
                    shard,
                    version,
                    contents.stream,
                    &contents.outbox,
                    &contents.rebuild,
                )
                .map_err(|e| e.to_string());
            let _ = written.blocking_send(Written {
                subgroup,
                shard,
                version,
                needed_from,
                result,
            });
        });
    }

    /// A checkpoint was written: its log compaction waits for `global`.
    pub fn written(&mut self, done: Written, global: &HashMap<u32, Version>) {
        if let Err(e) = done.result {
            warn!(error = %e, subgroup = done.subgroup, shard = done.shard, "writing a checkpoint; the log is not compacted");
            return;
        }
        info!(subgroup = done.subgroup, shard = done.shard, version = %done.version, "checkpoint written");
        let key = (done.subgroup, done.shard);
        if self
            .waiting
            .get(&key)
            .is_some_and(|j| j.version > done.version)
            || self.sent.get(&key).is_some_and(|v| *v >= done.version)
        {
            return;
        }
        self.waiting.insert(
            key,
            Job {
                subgroup: done.subgroup,
                shard: done.shard,
                version: done.version,
                needed_from: done.needed_from,
            },
        );
        self.durable(global);
    }

    /// Versions became durable everywhere: compact the logs whose checkpoints they cover.
    pub fn durable(&mut self, global: &HashMap<u32, Version>) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let ready: Vec<(u32, u32)> = self
            .waiting
            .iter()
            .filter(|(_, j)| global.get(&j.subgroup).is_some_and(|g| *g >= j.version))
            .map(|(k, _)| *k)
            .collect();
        for key in ready {
            let Some(job) = self.waiting.remove(&key) else {
                continue;
            };
            let version = job.version;
            match jobs.try_send(job) {
                Ok(()) => {
                    self.sent.insert(key, version);
                }
                // Full: it waits for the next durable version or compaction.
                Err(
                    mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job),
                ) => {
                    self.waiting.insert(key, job);
                }
            }
        }
    }
}

async fn compact_logs(
    checkpoints: Arc<Checkpoints>,
    handle: NodeHandle,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        let (g, s, version) = (job.subgroup, job.shard, job.version);
        let ck = Arc::clone(&checkpoints);
        // The marker first: once any segment is gone, only checkpoints from it on work.
        let marked = tokio::task::spawn_blocking(move || ck.set_log_start(g, s, version)).await;
        match marked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, subgroup = g, shard = s, "marking the log's start; not compacted");
                continue;
            }
            Err(e) => {
                warn!(error = %e, subgroup = g, shard = s, "marking the log's start");
                continue;
            }
        }
        if let Err(e) = handle.compact_log(g, s, job.needed_from).await {
            warn!(error = %e, subgroup = g, shard = s, "compacting the log");
            continue;
        }
        let ck = Arc::clone(&checkpoints);
        match tokio::task::spawn_blocking(move || ck.remove_below(g, s, version)).await {
            Ok(Ok(())) => {
                info!(subgroup = g, shard = s, checkpoint = %version, below = %Version(job.needed_from), "compacted the log");
            }
            Ok(Err(e)) => warn!(error = %e, subgroup = g, shard = s, "removing old checkpoints"),
            Err(e) => warn!(error = %e, subgroup = g, shard = s, "removing old checkpoints"),
        }
    }
}
