//! Limits and timers of the protocol core. Every queue and window has a named bound.

use crate::layout::{Layout, LayoutError};
use thiserror::Error;

/// Default [`CoreConfig::state_part_bytes_max`]: large enough that a part's fixed cost
/// is noise, small enough that a transport holds a few in flight without strain.
pub const STATE_PART_BYTES_MAX: usize = 16 << 20;

/// Default [`CoreConfig::update_data_bytes_max`]: a thousand 1 KiB messages share one
/// update; 1 MiB messages go one per update, each taken in as soon as it arrives.
pub const UPDATE_DATA_BYTES_MAX: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub layout: Layout,
    /// Messages a sender may have outstanding (sent, not yet delivered everywhere) per
    /// subgroup. Ordered mode counts deliveries, raw mode receipts.
    pub window_size: u64,
    /// Largest payload accepted by `send`.
    pub payload_size_max_bytes: usize,
    /// Sends accepted but not yet multicast (window full or view change) per subgroup.
    pub pending_sends_max: usize,
    /// Messages of one sender taken from the pending queue per flush (send batching).
    pub batch_messages_max: usize,
    /// Multicast payload bytes one `Wire::Update` carries; more go in further updates to
    /// the same peer (a larger message goes alone). Batching small messages is cheap,
    /// but a receiver takes a message in only whole: a flush of many large messages in
    /// one update would hold every one of them back until the last arrived, and could
    /// outgrow the transport's message limit.
    pub update_data_bytes_max: usize,
    /// A row is pushed at least this often even if nothing changed (the heartbeat).
    pub heartbeat_interval_ms: u64,
    /// A member heard from for this long is suspected.
    pub suspicion_timeout_ms: u64,
    /// A joiner that is not welcomed in this time asks the next contact.
    pub join_retry_ms: u64,
    /// Messages for views this member has not installed yet, buffered in arrival order.
    pub future_messages_max: usize,
    /// Round-robin slots usable in one view (at most 2^32: versions keep the slot in 32
    /// bits). A member that reaches it asks for an epoch roll: a new view, same members.
    pub view_slots_max: u64,
    /// A restart leader that has what it needs waits this long for the rest of the last
    /// view's members (or until all are back), so a straggler restarts with its log
    /// rather than as a newcomer.
    pub restart_grace_ms: u64,
    /// No view is installed without a majority of the previous one. Turning this off
    /// allows split brain under partitions; it exists for experiments only.
    pub partition_safety: bool,
    /// Read leases: a member whose read probe a majority answered with a promise serves
    /// linearizable local reads without a probe round for 9/10 of this long (its own
    /// clock), renewing in the background; each promiser agrees to no view change until
    /// the reader's row shows it wedged or this long has passed (its clock). 0: off (every
    /// read waits for a probe round). Needs `partition_safety`, and clocks whose rates
    /// differ by under 5%. A view change the reader cannot take part in (it crashed) waits
    /// up to this long.
    pub read_lease_ms: u64,
    /// A shard's state for a joiner travels in parts of at most this many bytes, so a
    /// state of any size fits the transport's message limit (which must exceed it).
    pub state_part_bytes_max: usize,
    /// State parts sent and not yet acknowledged by every joiner (`Wire::StateAck`: the
    /// joiner's application took them in) stay under this many bytes (one part always
    /// goes). With the application supplying the state piece by piece
    /// ([`Core::supply_state_piece`](crate::Core::supply_state_piece)), neither the
    /// source nor a joiner ever holds more than about this much of a transfer in flight,
    /// whatever the shard's size.
    pub state_window_bytes: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{field} must be positive")]
    Zero { field: &'static str },
    #[error("view_slots_max ({0}) must be between 1 and 2^32")]
    ViewSlots(u64),
    #[error("a restart needs a log that holds a view")]
    NothingToRestart,
    #[error("a restart needs at least one restart leader")]
    NoRestartLeader,
    #[error(
        "read_lease_ms ({lease}) must be under restart_grace_ms ({grace}): a total restart \
         must not outrun a lease granted before it"
    )]
    LeaseOverRestartGrace { lease: u64, grace: u64 },
    #[error("suspicion_timeout_ms ({timeout}) must exceed heartbeat_interval_ms ({heartbeat})")]
    TimeoutBelowHeartbeat { timeout: u64, heartbeat: u64 },
}

impl CoreConfig {
    pub fn new(layout: Layout) -> Self {
        CoreConfig {
            layout,
            window_size: 256,
            payload_size_max_bytes: 64 << 20,
            pending_sends_max: 16_384,
            batch_messages_max: 1024,
            update_data_bytes_max: UPDATE_DATA_BYTES_MAX,
            heartbeat_interval_ms: 10,
            suspicion_timeout_ms: 200,
            join_retry_ms: 100,
            future_messages_max: 65_536,
            view_slots_max: 1 << 32,
            restart_grace_ms: 2_000,
            partition_safety: true,
            read_lease_ms: 0,
            state_part_bytes_max: STATE_PART_BYTES_MAX,
            state_window_bytes: 2 * STATE_PART_BYTES_MAX,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.layout.validate()?;
        for (field, value) in [
            ("window_size", self.window_size),
            ("payload_size_max_bytes", self.payload_size_max_bytes as u64),
            ("pending_sends_max", self.pending_sends_max as u64),
            ("batch_messages_max", self.batch_messages_max as u64),
            ("update_data_bytes_max", self.update_data_bytes_max as u64),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("join_retry_ms", self.join_retry_ms),
            ("future_messages_max", self.future_messages_max as u64),
            ("state_part_bytes_max", self.state_part_bytes_max as u64),
            ("state_window_bytes", self.state_window_bytes as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.view_slots_max == 0 || self.view_slots_max > 1 << 32 {
            return Err(ConfigError::ViewSlots(self.view_slots_max));
        }
        if self.read_lease_ms > 0 && self.read_lease_ms >= self.restart_grace_ms {
            return Err(ConfigError::LeaseOverRestartGrace {
                lease: self.read_lease_ms,
                grace: self.restart_grace_ms,
            });
        }
        if self.suspicion_timeout_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::TimeoutBelowHeartbeat {
                timeout: self.suspicion_timeout_ms,
                heartbeat: self.heartbeat_interval_ms,
            });
        }
        Ok(())
    }
}
