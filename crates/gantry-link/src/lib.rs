//! The agent protocol over the network (see ARCHITECTURE.md, "Cluster mode"): the
//! ControlLink operations as JSON over HTTP/2 with mutual TLS, a cluster CA and join tokens.

pub mod client;
pub mod exec;
pub mod pki;
pub mod revocation;
pub mod seed;
pub mod server;
mod wire;
