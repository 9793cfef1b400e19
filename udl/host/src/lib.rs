//! The node's side of user-defined logic: plugins ([`plugin`]), data-flow graphs
//! ([`dfg`]), the workers that run invocations ([`engine`]) and the embedded
//! interpreter that hosts Python UDLs ([`python`]).

pub mod dfg;
pub mod engine;
pub mod plugin;
pub mod python;
