//! Runs Squall's protocol core ([`squall_platform::Core`]) between real processes: a
//! tokio driver that owns the core, a [`transport::Transport`] trait with its TCP
//! implementation, and the hookup of a durable [`squall_log::LogStore`].
//!
//! The core stays pure; everything here is I/O: sockets, the clock, files, threads.

pub mod frame;
pub mod incarnation;
pub mod node;
pub mod state;
pub mod transport;

pub use incarnation::{has_incarnation, next_incarnation, next_incarnation_from};
pub use node::{
    AppEvent, KeepState, LoggedHistory, LoggedRead, NodeConfig, NodeError, NodeEvent, NodeHandle,
    NodeSendError, SendReceipt, StateKeeper, TransferredState, logged_views, restart_order,
    start_node,
};
pub use transport::{Inbound, PeerAddr, TcpConfig, TcpTransport, Transport};
