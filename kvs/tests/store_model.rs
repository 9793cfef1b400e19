//! The shard store against a plain reference model: random puts, removes, conditional
//! writes, retried requests, compactions and drops of the pool (its removal), writes
//! made for pool generations dropped before they arrive, applied to both; every outcome
//! must agree,
//! and every historical read must agree or, after a compaction, be `Compacted` (always
//! for a point before the compaction's, never a wrong value).

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use squall_kvs::{
    Condition, MessageId, Op, Outcome, ReadError, ShardStore, StoreKind, StoreLimits, VersionReader,
};
use squall_platform::Version;

#[derive(Clone, Debug)]
enum Step {
    /// `generation`: the pool generation the write was made for (0: none, as in logs
    /// written before generations).
    Put {
        key: u8,
        value: u8,
        cond: u8,
        generation: u8,
    },
    Remove {
        key: u8,
        cond: u8,
        generation: u8,
    },
    /// Resend the `back`-th most recent request (a client retry).
    Retry {
        back: u8,
    },
    /// Forget the history before time `before_us` (the model's writes are stamped 1, 2,
    /// 3, ... in order: their hlc is 0).
    Compact {
        before_us: u8,
    },
    /// Drop the pool's objects (it was removed; a pool made again there starts empty):
    /// those of `generation` (0: none named).
    Drop {
        generation: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..4, any::<u8>(), 0u8..4, 0u8..5).prop_map(|(key, value, cond, generation)| Step::Put { key, value, cond, generation }),
        1 => (0u8..4, 0u8..4, 0u8..5).prop_map(|(key, cond, generation)| Step::Remove { key, cond, generation }),
        1 => (0u8..8).prop_map(|back| Step::Retry { back }),
        1 => (0u8..60).prop_map(|before_us| Step::Compact { before_us }),
        1 => (0u8..5).prop_map(|generation| Step::Drop { generation }),
    ]
}

/// The reference: every write ever made, in order; a key's state is its last write.
#[derive(Default)]
struct Model {
    writes: Vec<(Version, String, Option<u8>)>,
    answers: HashMap<MessageId, Outcome>,
    /// The newest point compacted to.
    horizon: Option<Version>,
    /// Writes before this index were dropped with the pool.
    live_from: usize,
    /// The newest pool generation dropped (0: none): writes made for it or an older one
    /// are refused, and its drop again does nothing.
    dropped: u64,
}

impl Model {
    fn latest(&self, key: &str, at: Option<Version>) -> Option<(Version, Option<u8>)> {
        self.writes[self.live_from..]
            .iter()
            .rev()
            .filter(|(v, k, _)| k == key && at.is_none_or(|at| *v <= at))
            .map(|(v, _, value)| (*v, *value))
            .next()
    }
    fn live(&self, key: &str) -> Option<Version> {
        self.latest(key, None)
            .and_then(|(v, value)| value.map(|_| v))
    }
    fn shard(&self) -> Option<Version> {
        self.writes.last().map(|(v, ..)| *v)
    }
}

struct Blobs(HashMap<Version, Bytes>);
impl VersionReader for Blobs {
    fn read(&self, version: Version) -> Result<Option<Bytes>, String> {
        Ok(self.0.get(&version).cloned())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn store_matches_the_model(steps in proptest::collection::vec(step(), 1..80)) {
        let mut store = ShardStore::new(StoreKind::Persistent, StoreLimits::default());
        let mut model = Model::default();
        let mut blobs = Blobs(HashMap::new());
        let mut sent: Vec<Op> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let version = Version::new(2, i as u32);
            let id = MessageId { client: 9, seq: i as u64 };
            let key_name = |k: u8| format!("/p/k{k}");
            let condition = |m: &Model, key: &str, cond: u8| match cond {
                0 => Condition::Always,
                1 => Condition::KeyVersion(m.live(key)),
                2 => Condition::KeyVersion(None),
                _ => Condition::ShardVersion(m.shard()),
            };
            let op = match step {
                Step::Put { key, value, cond, generation } => {
                    let k = key_name(*key);
                    Op::Put { id, hlc_us: 0, condition: condition(&model, &k, *cond), pool_generation: u64::from(*generation), key: k, blob: Bytes::from(vec![*value]) }
                }
                Step::Remove { key, cond, generation } => {
                    let k = key_name(*key);
                    Op::Remove { id, hlc_us: 0, condition: condition(&model, &k, *cond), pool_generation: u64::from(*generation), key: k }
                }
                Step::Retry { back } => match sent.len().checked_sub(1 + *back as usize) {
                    Some(j) => sent[j].clone(),
                    None => continue,
                },
                Step::Drop { generation } => {
                    let generation = u64::from(*generation);
                    let op = Op::DropPool { id, pool: "/p".into(), shard: 0, generation };
                    let (got, _) = store.apply(version, &op);
                    sent.push(op);
                    if generation != 0 && model.dropped >= generation {
                        // A second remover's: nothing goes.
                        prop_assert_eq!(got, Outcome::Dropped { keys_dropped: 0, versions_dropped: 0 }, "step {}", i);
                        continue;
                    }
                    model.dropped = model.dropped.max(generation);
                    let live_keys = (0..4u8).filter(|k| model.latest(&key_name(*k), None).is_some()).count() as u64;
                    let versions = (model.writes.len() - model.live_from) as u64;
                    match got {
                        // Every key with a version kept (compactions may have dropped some).
                        Outcome::Dropped { keys_dropped, versions_dropped } => {
                            prop_assert!(keys_dropped <= live_keys && versions_dropped <= versions, "step {}", i);
                            if model.horizon.is_none() {
                                prop_assert_eq!((keys_dropped, versions_dropped), (live_keys, versions), "step {}", i);
                            }
                        }
                        other => prop_assert!(false, "step {}: {:?}", i, other),
                    }
                    model.live_from = model.writes.len();
                    model.horizon = None;
                    continue;
                }
                Step::Compact { before_us } => {
                    let op = Op::Compact { id, pool: "/p".into(), shard: 0, before_us: u64::from(*before_us) };
                    // The newest write stamped at or before the time (the n-th write is
                    // stamped n), if not dropped and past the horizon.
                    let n = (*before_us as usize).min(model.writes.len());
                    let point = n.checked_sub(1).filter(|w| *w >= model.live_from).map(|w| model.writes[w].0);
                    if point > model.horizon {
                        model.horizon = point;
                    }
                    let would = store.would_compact("/p", u64::from(*before_us));
                    let (got, _) = store.apply(version, &op);
                    match got {
                        Outcome::Compacted { through, versions_dropped, keys_dropped, .. } => {
                            prop_assert_eq!(through, model.horizon, "step {}", i);
                            prop_assert_eq!(would, versions_dropped + keys_dropped > 0, "step {}", i);
                        }
                        other => prop_assert!(false, "step {}: {:?}", i, other),
                    }
                    sent.push(op);
                    continue;
                }
            };
            // What the model expects.
            let expected = if let Some(first) = model.answers.get(&op.id()) {
                first.clone()
            } else {
                let (key, condition, value, generation) = match &op {
                    Op::Put { key, condition, blob, pool_generation, .. } => (key.clone(), *condition, Some(blob[0]), *pool_generation),
                    Op::Remove { key, condition, pool_generation, .. } => (key.clone(), *condition, None, *pool_generation),
                    // A retried compaction: answered as the first time, nothing more.
                    _ => {
                        let (got, duplicate) = store.apply(version, &op);
                        prop_assert!(duplicate && matches!(got, Outcome::Compacted { .. } | Outcome::Dropped { .. }), "step {}", i);
                        continue;
                    }
                };
                let live = model.live(&key);
                let outcome = match condition {
                    _ if generation != 0 && generation <= model.dropped => Outcome::PoolRemoved { pool: "/p".into(), generation: model.dropped },
                    Condition::KeyVersion(want) if want != live => Outcome::Conflict { current: live },
                    Condition::ShardVersion(want) if want != model.shard() => Outcome::Conflict { current: model.shard() },
                    _ if value.is_none() && live.is_none() => Outcome::NoSuchKey,
                    _ => {
                        model.writes.push((version, key, value));
                        Outcome::Applied { version, timestamp_us: 0 }
                    }
                };
                model.answers.insert(op.id(), outcome.clone());
                outcome
            };
            let (got, _) = store.apply(version, &op);
            // Timestamps are the store's to choose; compare everything else.
            let got_cmp = match got { Outcome::Applied { version, .. } => Outcome::Applied { version, timestamp_us: 0 }, o => o };
            let expected_cmp = match expected { Outcome::Applied { version, .. } => Outcome::Applied { version, timestamp_us: 0 }, o => o };
            prop_assert_eq!(got_cmp, expected_cmp, "step {} {:?}", i, step);
            if let Op::Put { blob, .. } = &op { blobs.0.insert(version, blob.clone()); }
            if !matches!(step, Step::Retry { .. }) { sent.push(op); }
        }
        // Every key as of every version reads as the model says, or was compacted: always
        // before the horizon, and never as of the newest version.
        for k in 0..4u8 {
            let key = format!("/p/k{k}");
            prop_assert_eq!(store.latest(&key).map(|o| o.blob[0]), model.latest(&key, None).and_then(|(_, v)| v));
            for i in 0..steps.len() as u32 {
                let at = Version::new(2, i);
                let want = model.latest(&key, Some(at)).and_then(|(_, v)| v);
                match store.at_version(&key, at, &blobs) {
                    Ok(got) => {
                        prop_assert!(model.horizon.is_none_or(|h| at >= h), "{} at {} is before the horizon", key, at);
                        prop_assert_eq!(got.map(|o| o.blob[0]), want, "{} at {}", key, at);
                    }
                    Err(ReadError::Compacted { .. }) => {
                        prop_assert!(model.horizon.is_some(), "{} at {}: compacted without a compaction", key, at);
                        prop_assert!(i + 1 < steps.len() as u32, "{} as of the last version", key);
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
        }
    }
}
