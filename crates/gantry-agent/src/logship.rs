//! Ships a container's log file (CRI records written by its shim) to the log store as awslogs
//! would: stream `prefix/container/task-id` in the configured group. Runs on a thread; after
//! the container has exited, `finish` drains to the end of the file and stops.

use gantry_control::logstore::LogStore;
use gantry_runtime::shim::parse_log_line;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Shipper {
    done: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

pub struct Target {
    pub account: String,
    pub region: String,
    pub group: String,
    pub stream: String,
}

fn parse_ms(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|_| chrono::Utc::now().timestamp_millis())
}

impl Shipper {
    pub fn start(logs: Arc<LogStore>, file: PathBuf, target: Target) -> Shipper {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let offset_file = file.with_extension("shipped");
        let handle = std::thread::spawn(move || {
            let scope = (target.account.as_str(), target.region.as_str());
            let mut offset: u64 = std::fs::read_to_string(&offset_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let mut partial = String::new();
            loop {
                let finishing = d.load(Ordering::SeqCst);
                let mut batch: Vec<(i64, String)> = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&file) {
                    if f.seek(SeekFrom::Start(offset)).is_ok() {
                        let mut r = BufReader::new(f);
                        let mut line = Vec::new();
                        while let Ok(n) = r.read_until(b'\n', &mut line) {
                            if n == 0 || !line.ends_with(b"\n") {
                                break;
                            }
                            offset += n as u64;
                            if let Some(l) = parse_log_line(&line[..line.len() - 1]) {
                                partial.push_str(&String::from_utf8_lossy(l.content));
                                if !l.partial || partial.len() >= 256 * 1024 - 26 {
                                    batch.push((parse_ms(l.time), std::mem::take(&mut partial)));
                                }
                            }
                            line.clear();
                            if batch.len() >= 5000 {
                                break;
                            }
                        }
                    }
                }
                if !batch.is_empty() {
                    batch.sort_by_key(|e| e.0);
                    match logs.put(
                        scope,
                        &target.group,
                        &target.stream,
                        &batch,
                        chrono::Utc::now().timestamp_millis(),
                    ) {
                        Ok(()) => {
                            let _ = std::fs::write(&offset_file, offset.to_string());
                        }
                        Err(e) => {
                            tracing::warn!(group = %target.group, stream = %target.stream, error = %e, "shipping logs")
                        }
                    }
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
