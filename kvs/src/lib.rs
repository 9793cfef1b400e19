//! Squall's object store on `squall-platform`: keys (absolute paths), object pools (path
//! prefix → store kind, subgroup, sharding), the operations a shard applies in delivery
//! order and their encoding, and the per-shard store every replica runs identically.
//!
//! This crate is pure logic: no sockets, files or threads. The node (in `adapters`)
//! multicasts encoded operations through the platform, applies what is delivered to the
//! shard's [`store::ShardStore`], and answers clients.

pub mod key;
pub mod op;
pub mod pool;
pub mod store;

pub use key::{KEY_BYTES_MAX_DEFAULT, KeyError, validate_key};
pub use op::{Condition, MessageId, OUTBOX_POOL, Op, OpError, outbox_key};
pub use pool::{GpuCache, Pool, PoolError, PoolSpec, PoolTable, StoreKind};
pub use store::{
    Change, Horizon, NoHistory, Object, Outcome, ReadError, ShardStore, SnapshotLoader,
    SnapshotStream, StoreLimits, VersionMeta, VersionReader,
};
