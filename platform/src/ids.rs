//! Identities and version numbers shared by every part of the group layer.

use std::fmt;

/// A node's stable identity (configured, survives restarts).
pub type NodeId = u32;

/// Views are numbered 0, 1, 2, ... within one group's life.
pub type ViewId = u32;

/// One life of a node. A node that restarts, or that was suspected and rejoins, comes back
/// as a new incarnation: a suspected member never returns in the same incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId {
    pub node: NodeId,
    pub incarnation: u32,
}

impl MemberId {
    pub const fn new(node: NodeId, incarnation: u32) -> Self {
        MemberId { node, incarnation }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.{}", self.node, self.incarnation)
    }
}

/// A delivered message's version: `(view_id << 32) | seq`, strictly increasing along a
/// shard's delivery order across views.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub u64);

impl Version {
    pub const fn new(view_id: ViewId, seq: u32) -> Self {
        Version(((view_id as u64) << 32) | seq as u64)
    }
    pub const fn view_id(self) -> ViewId {
        (self.0 >> 32) as ViewId
    }
    pub const fn seq(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}:{}", self.view_id(), self.seq())
    }
}

/// Handed back by [`crate::Core::send`]; the sender's own delivery of that message
/// carries it, so a caller can match "my message" to its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendTicket(pub u64);
