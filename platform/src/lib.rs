//! Squall's group layer: a Derecho-like virtual-synchrony protocol written as a pure state
//! machine ([`Core`]) plus, behind the `sim` feature, the deterministic fault simulator and
//! the history checkers that prove it.
//!
//! The core does no I/O: a driver feeds it messages, clock ticks, failure reports and
//! persistence completions, and executes the [`Output`] commands it returns.

pub mod codec;
pub mod config;
pub mod core;
pub mod ids;
pub mod layout;
pub mod restart;
pub mod row;
pub mod view;
pub mod wire;

#[cfg(feature = "sim")]
pub mod sim;

pub use crate::config::{ConfigError, CoreConfig, STATE_PART_BYTES_MAX, UPDATE_DATA_BYTES_MAX};
pub use crate::core::{
    Core, Delivery, DeliveryKind, Output, RestartWait, SendError, StopReason, next_view,
};
pub use crate::ids::{MemberId, NodeId, SendTicket, Version, ViewId};
pub use crate::layout::{
    DeliveryMode, Inadequate, Layout, LayoutError, ShardLayout, SubgroupLayout,
};
pub use crate::restart::{LoggedState, NotYet, RestartPlan, RestartShard, ShardFed, ShardTail};
pub use crate::row::{Ballot, Change, Proposal, Row, ShardRow, Trim};
pub use crate::view::{ShardView, View};
pub use crate::wire::{DataRun, Item, Wire};
