//! The head start of cgroup moves (`cgroup::prime_attach`) is a move of this process into the
//! cgroup it is already in: the file exists on this host, root may write it, and the write
//! leaves the process where it was. Root, as the node needs.

use gantry_runtime::cgroup::{own_procs_file, prime_attach, version};
use std::fs;

#[test]
fn the_no_op_move_is_allowed_and_moves_nothing() {
    let before = fs::read_to_string("/proc/self/cgroup").unwrap();
    let file = own_procs_file(&before, version()).expect("this host has a pids hierarchy (v1) or is cgroup v2");
    assert!(file.is_file(), "{} is not a file", file.display());
    fs::write(&file, "0").unwrap_or_else(|e| panic!("writing 0 to {}: {e} (are we root?)", file.display()));
    assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    // The background primer does the same; a burst of calls coalesces and never blocks.
    for _ in 0..100 {
        prime_attach();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
}
