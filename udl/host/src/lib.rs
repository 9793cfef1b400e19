//! The node's side of user-defined logic: plugins ([`plugin`]), data-flow graphs
//! ([`dfg`]) and the workers that run invocations ([`engine`]).

pub mod dfg;
pub mod engine;
pub mod plugin;
