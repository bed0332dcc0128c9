//! Scripts run through libnftables in the process land as they do through the `nft` command,
//! in the calling thread's network namespace, and fail with nft's own message. Each check runs
//! in a network namespace of its own (a thread that unshared one), so the host's rules are
//! never touched. Root and nftables, as the node needs.

use gantry_runtime::net::firewall::{library_loaded, nft, nft_command, FirewallError};
use std::process::Command;

const SCRIPT: &str = "add table inet gantry_t\n\
    add chain inet gantry_t input { type filter hook input priority filter; policy drop; }\n\
    add rule inet gantry_t input ip saddr { 10.1.0.5, 10.1.0.6 } tcp dport 80 accept\n";

/// Runs `f` in a thread inside a new network namespace; `nft list ruleset` there afterwards.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, String) {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET): are we root?"
        );
        let out = f();
        // A child forked from this thread starts in its namespace.
        let listed = Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .expect("nft is installed");
        (out, String::from_utf8_lossy(&listed.stdout).to_string())
    })
    .join()
    .unwrap()
}

#[test]
fn the_library_and_the_command_make_the_same_rules_in_the_threads_namespace() {
    assert!(
        library_loaded(),
        "libnftables1 is not installed (scripts/install-deps.sh installs nftables, which brings it)"
    );
    let (by_library, listed_library) = in_new_netns(|| nft(SCRIPT).map_err(|e| e.to_string()));
    let (by_command, listed_command) = in_new_netns(|| nft_command(SCRIPT).map_err(|e| e.to_string()));
    assert_eq!((by_library, by_command), (Ok(()), Ok(())));
    assert!(
        listed_library.contains("ip saddr { 10.1.0.5, 10.1.0.6 } tcp dport 80 accept"),
        "{listed_library}"
    );
    assert_eq!(listed_library, listed_command);
    // Nothing of it in this (the host's) namespace.
    let host = Command::new("nft")
        .args(["list", "table", "inet", "gantry_t"])
        .output()
        .unwrap();
    assert!(!host.status.success(), "the rules went to the host's namespace");
}

#[test]
fn a_failing_script_says_what_nft_says_and_changes_nothing() {
    let bad = format!("{SCRIPT}add rule inet gantry_t nosuch accept\n");
    let (err, listed) = in_new_netns(move || nft(&bad));
    match err {
        Err(FirewallError::Nft { stderr }) => {
            assert!(
                stderr.contains("Could not process rule: No such file or directory"),
                "{stderr}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!listed.contains("gantry_t"), "a failed transaction left {listed}");
    let (err, _) = in_new_netns(|| nft("this is not nft\n"));
    assert!(
        matches!(err, Err(FirewallError::Nft { ref stderr }) if stderr.contains("syntax error")),
        "{err:?}"
    );
    let (err, _) = in_new_netns(|| nft("add table inet a\0b\n"));
    assert!(
        matches!(err, Err(FirewallError::Nft { ref stderr }) if stderr.contains("NUL")),
        "{err:?}"
    );
}

#[test]
fn the_library_runs_when_the_process_holds_more_than_fd_setsize_descriptors() {
    // A node with a few hundred tasks holds over 1,024 descriptors; libnftables' select() on
    // a socket numbered past that aborts the process (glibc: "bit out of range").
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a valid rlimit to fill, then to set.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur > 1300,
        "RLIMIT_NOFILE's hard limit {} is too low for this test",
        limit.rlim_cur
    );
    let null = std::fs::File::open("/dev/null").unwrap();
    let held: Vec<std::fs::File> = (0..1200).map(|_| null.try_clone().unwrap()).collect();
    let (done, listed) = in_new_netns(|| nft(SCRIPT).map_err(|e| e.to_string()));
    assert_eq!(done, Ok(()));
    assert!(listed.contains("tcp dport 80 accept"), "{listed}");
    use std::os::fd::AsRawFd;
    let last = held.last().unwrap().as_raw_fd();
    assert!(last >= 1024, "the test held descriptors up to {last} only");
    // SAFETY: F_GETFD only reads the descriptor's flags.
    assert!(
        unsafe { libc::fcntl(last, libc::F_GETFD) } >= 0,
        "the process's descriptors were closed"
    );
}

#[test]
fn the_library_thread_runs_each_script_in_its_callers_namespace_and_returns() {
    let add = |t: &'static str| move || nft(&format!("add table inet {t}\n")).map_err(|e| e.to_string());
    let (a, listed_a) = in_new_netns(add("gantry_ta"));
    let (b, listed_b) = in_new_netns(add("gantry_tb"));
    assert_eq!((a, b), (Ok(()), Ok(())));
    assert!(
        listed_a.contains("table inet gantry_ta") && !listed_a.contains("gantry_tb"),
        "{listed_a}"
    );
    assert!(
        listed_b.contains("table inet gantry_tb") && !listed_b.contains("gantry_ta"),
        "{listed_b}"
    );
    for t in ["gantry_ta", "gantry_tb"] {
        let host = Command::new("nft").args(["list", "table", "inet", t]).output().unwrap();
        assert!(!host.status.success(), "{t} went to the host's namespace");
    }
}
