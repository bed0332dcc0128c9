//! Ships a container's log file (CRI records written by its shim) to the log store as awslogs
//! would: stream `prefix/container/task-id` in the configured group. Runs on a thread; after
//! the container has exited, `finish` drains to the end of the file and stops.

use crate::link::{ControlLink, LogTarget};
use gantry_runtime::shim::parse_log_line;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Shipper {
    done: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

fn parse_ms(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis())
}

/// Where reading the container's log file has got to. Advanced only once a batch is stored,
/// so a failed put is retried from the same place instead of losing the batch.
#[derive(Debug, Clone, Default, PartialEq)]
struct Cursor {
    offset: u64,
    /// Content of CRI partial records not yet completed by a full one.
    partial: String,
}

/// Reads complete records after `at`: the batch (at most 5000 events) and the cursor after it.
fn read_batch(file: &Path, at: &Cursor) -> (Vec<(i64, String)>, Cursor) {
    let mut next = at.clone();
    let mut batch = Vec::new();
    let Ok(mut f) = std::fs::File::open(file) else {
        return (batch, next);
    };
    if f.seek(SeekFrom::Start(at.offset)).is_err() {
        return (batch, next);
    }
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    while let Ok(n) = r.read_until(b'\n', &mut line) {
        if n == 0 || !line.ends_with(b"\n") {
            break;
        }
        next.offset += n as u64;
        if let Some(l) = parse_log_line(&line[..line.len() - 1]) {
            next.partial.push_str(&String::from_utf8_lossy(l.content));
            if !l.partial || next.partial.len() >= 256 * 1024 - 26 {
                batch.push((parse_ms(l.time), std::mem::take(&mut next.partial)));
            }
        }
        line.clear();
        if batch.len() >= 5000 {
            break;
        }
    }
    batch.sort_by_key(|e| e.0);
    (batch, next)
}

/// Failed puts in a row after which a finishing shipper gives up (the task must stop).
const GIVE_UP_AFTER: u32 = 20;

/// One step: ships the next batch with `put`. Returns whether there was anything to ship.
fn ship_once(
    file: &Path,
    cursor: &mut Cursor,
    failures: &mut u32,
    put: &mut impl FnMut(&[(i64, String)]) -> Result<(), String>,
) -> bool {
    let (batch, next) = read_batch(file, cursor);
    if batch.is_empty() {
        // Only partial records were read: keep them, nothing to store yet.
        *cursor = next;
        return false;
    }
    match put(&batch) {
        Ok(()) => {
            *cursor = next;
            *failures = 0;
        }
        Err(e) => {
            *failures += 1;
            tracing::warn!(file = %file.display(), error = %e, attempt = *failures, "shipping logs (will retry)");
        }
    }
    true
}

impl Shipper {
    /// Ships from a thread of its own; puts go through the link on the caller's runtime.
    pub fn start(link: Arc<dyn ControlLink>, file: PathBuf, target: LogTarget) -> Shipper {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let rt = tokio::runtime::Handle::current();
        let offset_file = file.with_extension("shipped");
        let handle = std::thread::spawn(move || {
            let mut cursor = Cursor {
                offset: std::fs::read_to_string(&offset_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0),
                partial: String::new(),
            };
            let mut failures = 0;
            let mut put =
                |batch: &[(i64, String)]| rt.block_on(link.put_log_events(&target, batch)).map_err(String::from);
            loop {
                let finishing = d.load(Ordering::SeqCst);
                let shipped_from = cursor.offset;
                if ship_once(&file, &mut cursor, &mut failures, &mut put) {
                    if cursor.offset != shipped_from {
                        let _ = std::fs::write(&offset_file, cursor.offset.to_string());
                    }
                    if failures == 0 {
                        continue;
                    }
                    if finishing && failures >= GIVE_UP_AFTER {
                        tracing::error!(group = %target.group, stream = %target.stream, "giving up shipping logs of a stopped container");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100 * failures.min(10) as u64));
                    continue;
                }
                if finishing {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Shipper {
            done,
            handle: Some(handle),
        }
    }

    /// Drains what is left and stops.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> String {
        format!("2026-11-28T09:00:00.{i:09}Z stdout F line {i}\n")
    }

    #[test]
    fn a_failed_put_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("container.log");
        std::fs::write(&file, (0..3).map(record).collect::<String>()).unwrap();
        let mut stored: Vec<String> = Vec::new();
        let mut fail_next = true;
        let mut put = |b: &[(i64, String)]| {
            if std::mem::take(&mut fail_next) {
                return Err("store unavailable".to_string());
            }
            stored.extend(b.iter().map(|e| e.1.clone()));
            Ok(())
        };
        let (mut cursor, mut failures) = (Cursor::default(), 0);
        assert!(ship_once(&file, &mut cursor, &mut failures, &mut put));
        assert_eq!(
            (cursor.offset, failures),
            (0, 1),
            "the cursor stays put after a failure"
        );
        assert!(ship_once(&file, &mut cursor, &mut failures, &mut put));
        assert!(!ship_once(&file, &mut cursor, &mut failures, &mut put));
        assert_eq!(stored, ["line 0", "line 1", "line 2"]);
        assert_eq!(failures, 0);
    }

    #[test]
    fn partial_records_are_joined_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("container.log");
        std::fs::write(&file, "2026-11-28T09:00:00Z stdout P hel\n").unwrap();
        let mut stored: Vec<String> = Vec::new();
        let mut put = |b: &[(i64, String)]| {
            stored.extend(b.iter().map(|e| e.1.clone()));
            Ok(())
        };
        let (mut cursor, mut failures) = (Cursor::default(), 0);
        assert!(!ship_once(&file, &mut cursor, &mut failures, &mut put));
        let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
        std::io::Write::write_all(&mut f, b"2026-11-28T09:00:01Z stdout F lo\n").unwrap();
        assert!(ship_once(&file, &mut cursor, &mut failures, &mut put));
        assert_eq!(stored, ["hello"]);
    }
}
