//! Node-level machinery: images, sandboxes (network namespaces), OCI bundles, the runtime CLI
//! driver, cgroups and cleanup. Knows nothing about ECS.

pub mod bundle;
pub mod cgroup;
pub mod digest;
pub mod image;
pub mod net;
pub mod oci;
pub mod shim;
mod sys;
pub use sys::{block_termination_signals, run_in_private_mount_ns, wait_termination_signal};
pub mod task;
