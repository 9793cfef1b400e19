//! The ways into Squall: [`config`] (one node's TOML configuration), [`node`] (the node:
//! platform + object store service + client server), [`service`] (the object store
//! service), [`udl`] (the node's UDL runtime), [`server`] and [`wire`] (the client
//! protocol), [`client`] (the Rust client), [`http`] (REST API, metrics, dashboard),
//! [`addr`] (`host:port` addresses that may be DNS names), [`gpu`] (the node's GPU caches
//! of `gpu_cache` pools), [`checkpoint`] (persistent shards' checkpoints, which let a
//! compacted log be replayed), [`compaction`] (writing them and compacting the log).

pub mod addr;
pub mod checkpoint;
pub mod client;
pub mod compaction;
pub mod config;
pub mod dashboard;
pub mod gpu;
pub mod http;
pub mod metrics;
pub mod node;
pub mod server;
pub mod service;
pub mod udl;
pub mod wan;
pub mod wire;
