//! Node-level machinery: images, sandboxes (network namespaces), OCI bundles, the runtime CLI
//! driver, cgroups and cleanup. Knows nothing about ECS.

pub mod bundle;
pub mod cgroup;
pub mod digest;
pub mod ephemeral;
pub mod image;
pub mod mntns;
pub mod net;
pub mod oci;
pub mod seccomp_bpf;
pub mod shim;
mod sys;
pub mod syscalls;
pub use sys::{bind_mount, default_sigpipe};
pub use sys::{block_termination_signals, run_in_private_mount_ns, wait_termination_signal};
pub mod task;

/// `chars` random lowercase hex characters (ids, temporary names).
pub fn random_hex(chars: usize) -> String {
    let mut b = vec![0u8; chars.div_ceil(2)];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom is readable"),
        &mut b,
    )
    .expect("/dev/urandom is readable");
    hex::encode(b)[..chars].to_string()
}
