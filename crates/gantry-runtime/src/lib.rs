//! Node-level machinery: images, sandboxes (network namespaces), OCI bundles, the runtime CLI
//! driver, cgroups and cleanup. Knows nothing about ECS.

pub mod digest;
pub mod image;
mod sys;
