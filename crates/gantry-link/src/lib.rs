//! The agent protocol over the network (see ARCHITECTURE.md, "Cluster mode").

pub mod pki;
