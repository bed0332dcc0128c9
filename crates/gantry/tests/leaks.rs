//! 200 run/stop cycles must leave nothing behind, checked against the kernel's own lists:
//! mountinfo, /sys/class/net, the cgroup hierarchies, /proc, plus the lease file.

mod common;

use common::*;
use gantry_runtime::task::ContainerState;
use std::path::Path;
use std::time::Duration;

fn count_lines_containing(path: &str, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn veths() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("gv"))
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn two_hundred_run_stop_cycles_leak_nothing() {
    let t = TestNode::new();
    let dir = t.dir.path().to_string_lossy().to_string();
    // The node's template mount namespace is made once and kept: count from after it.
    assert!(
        t.node.mount_template().is_some(),
        "the template mount namespace could not be made"
    );
    let mounts_before = count_lines_containing("/proc/self/mountinfo", &dir);
    let overlays_before = count_lines_containing("/proc/self/mountinfo", " overlay ");
    let veths_before = veths();
    let fds_before = open_fds();

    // A long-running witness: its shim's mount namespace must hold no other task's netns
    // mount (it starts from the template, which has none), or it would pin them alive.
    t.node.fill_pools(3).unwrap();
    let witness = t.start(
        &t.image,
        sh("trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"),
        Duration::from_secs(5),
    );
    t.wait_for_output(&witness, "ready");
    let ContainerState::Running(w) = t.node.container_state(&witness, "main") else {
        panic!("witness not running")
    };
    let witness_ns = t.node.sandbox(&witness).unwrap().name;

    for i in 0..200 {
        if i % 20 == 0 {
            t.node.fill_pools(3).unwrap();
        }
        if i % 2 == 0 {
            // Runs to completion by itself.
            let (e, out, _) = t.run(&t.image, sh("echo cycle"));
            assert_eq!((e.exit_code, out.as_str()), (0, "cycle\n"), "cycle {i}");
        } else {
            // Long-running, stopped from outside.
            let task = t.start(
                &t.image,
                sh("trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"),
                Duration::from_secs(5),
            );
            t.wait_for_output(&task, "ready");
            t.node.stop_container(&task, "main");
            match t.node.wait_container(&task, "main", Some(Duration::from_secs(10))) {
                Some(ContainerState::Exited(e)) => assert_eq!(e.exit_code, 0, "cycle {i}"),
                other => panic!("cycle {i}: {other:?}"),
            }
            t.node.remove_task(&task).unwrap();
        }
    }
    t.node.drain_pools().unwrap();
    // Nor any task's ephemeral storage but its own (cloned in, not the shared directory).
    let storage = t.node.ephemeral().root().display().to_string();
    let witness_mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", w.shim_pid)).unwrap();
    let storage_seen: Vec<&str> = witness_mounts.lines().filter(|l| l.contains(&storage)).collect();
    assert!(
        storage_seen.is_empty(),
        "the witness shim sees the storage directory: {storage_seen:?}"
    );
    // The witness shim holds its own task's namespace (bound privately) and nobody else's:
    // the shared namespace directory is detached from its mount namespace.
    let witness_mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", w.shim_pid)).unwrap();
    let seen_by_witness: Vec<&str> = witness_mounts
        .lines()
        .filter(|l| l.contains(&format!("{}/", t.cfg.network.netns_dir.display())))
        .collect();
    assert!(
        seen_by_witness.is_empty(),
        "the witness shim still holds other tasks' namespaces: {seen_by_witness:?}"
    );
    let own = t.node.container_dir(&witness, "main").join("netns");
    assert!(
        witness_mounts
            .lines()
            .any(|l| l.contains(&format!(" {} ", own.display()))),
        "the witness shim holds its own namespace ({witness_ns}) at {}",
        own.display()
    );
    t.node.stop_container(&witness, "main");
    t.wait(&witness, 10);
    t.node.remove_task(&witness).unwrap();

    assert!(loop_devices_backed_by(t.dir.path()).is_empty(), "leaked loop devices");
    // Mounts: only the netns and ephemeral directories' own bind mounts remain.
    let mounts_after = count_lines_containing("/proc/self/mountinfo", &dir);
    assert_eq!(
        mounts_after,
        mounts_before,
        "leaked mounts:\n{}",
        std::fs::read_to_string("/proc/self/mountinfo").unwrap()
    );
    assert_eq!(
        count_lines_containing("/proc/self/mountinfo", " overlay "),
        overlays_before,
        "leaked overlay mounts"
    );
    // Namespaces: no nsfs mount files, no veths, nothing on the bridge.
    assert_eq!(
        std::fs::read_dir(&t.cfg.network.netns_dir).unwrap().count(),
        0,
        "leaked netns files"
    );
    assert_eq!(veths(), veths_before, "leaked veths");
    let brif = format!("/sys/class/net/{}/brif", t.cfg.network.bridge);
    assert_eq!(std::fs::read_dir(&brif).unwrap().count(), 0, "ports left on the bridge");
    // Cgroups: no container cgroups in any hierarchy.
    let left = gantry_runtime::cgroup::children(gantry_runtime::task::CGROUP_PARENT);
    assert!(left.is_empty(), "leaked cgroups: {left:?}");
    // Leases, task dirs (upper dirs live there), runtime state.
    assert!(t.node.network().ipam().leases().unwrap().is_empty(), "leaked leases");
    assert_eq!(
        std::fs::read_dir(t.cfg.data_dir.join("tasks")).unwrap().count(),
        0,
        "leaked task dirs"
    );
    assert_eq!(
        std::fs::read_dir(t.cfg.run_dir.join("runtime")).unwrap().count(),
        0,
        "leaked runtime state"
    );
    // Processes: no shim or container process refers to this node's directories.
    std::thread::sleep(Duration::from_millis(200));
    let procs = processes_mentioning(&dir);
    assert!(procs.is_empty(), "leaked processes: {procs:?}");
    assert!(
        open_fds() <= fds_before + 2,
        "fd leak: {} -> {}",
        fds_before,
        open_fds()
    );
    assert!(Path::new(&t.cfg.network.netns_dir).is_dir());
    // The node's own state goes with it: bridge and firewall table.
    let bridge = t.cfg.network.bridge.clone();
    drop(t);
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let table = gantry_runtime::net::firewall::table_name(&bridge).unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(&format!("{table}\n")),
        "leaked nftables table {table}"
    );
    assert!(
        !Path::new(&format!("/sys/class/net/{bridge}")).exists(),
        "leaked bridge {bridge}"
    );
}
