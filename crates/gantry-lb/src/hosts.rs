//! Load balancer DNS names in /etc/hosts: each Gantry instance owns the lines it tags and never
//! touches others'. Rewrites go to a temporary file renamed over the original, under a lock,
//! so concurrent instances never lose each other's lines and readers never see half a file.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

fn marker(tag: &str) -> String {
    format!("# gantry-lb {tag}")
}

/// The file's text with this instance's lines replaced by `entries`.
pub fn rewrite(existing: &str, tag: &str, entries: &[(Ipv4Addr, String)]) -> String {
    let mark = marker(tag);
    let mut out: String = existing
        .lines()
        .filter(|l| !l.ends_with(&mark))
        .map(|l| format!("{l}\n"))
        .collect();
    for (ip, name) in entries {
        out.push_str(&format!("{ip}\t{name}\t{mark}\n"));
    }
    out
}

/// Replaces this instance's lines in the hosts file.
pub fn sync(path: &Path, tag: &str, entries: &[(Ipv4Addr, String)]) -> std::io::Result<()> {
    let lock_path = path.with_extension("gantry-lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = rewrite(&existing, tag, entries);
    if text == existing {
        return Ok(());
    }
    let tmp = path.with_extension("gantry-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        // A bind-mounted hosts file (containers) cannot be replaced, only rewritten.
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
            std::fs::write(path, text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_instances_lines_change() {
        let before = "127.0.0.1\tlocalhost\n127.77.0.1\ta.elb\t# gantry-lb one\n127.78.0.1\tb.elb\t# gantry-lb two\n";
        let after = rewrite(before, "one", &[("127.77.0.2".parse().unwrap(), "c.elb".into())]);
        assert_eq!(
            after,
            "127.0.0.1\tlocalhost\n127.78.0.1\tb.elb\t# gantry-lb two\n127.77.0.2\tc.elb\t# gantry-lb one\n"
        );
        assert_eq!(
            rewrite(&after, "one", &[]),
            "127.0.0.1\tlocalhost\n127.78.0.1\tb.elb\t# gantry-lb two\n"
        );
    }
}
