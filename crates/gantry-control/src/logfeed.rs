//! CloudWatch Logs in a cluster: every server keeps a whole copy of the logs in its own
//! logs.db, replicated through the shared store's feed (`crate::feed`). One server, or
//! `gantry dev`, writes straight to its one copy.

use crate::feed::{FeedCopy, Replica};
use crate::logstore::{LogOp, LogStore, LogWrite, LogsError};
use gantry_store::{Store, StoreError};

/// Events of one Put are numbered `revision * ID_STRIDE + i` on every copy (at most 10,000
/// events per batch), so paging tokens work on any server.
const ID_STRIDE: i64 = 16_384;

/// This server's logs.
pub type Logs = Replica<LogStore>;

impl FeedCopy for LogStore {
    type Write = LogWrite;
    type Error = LogsError;
    const PREFIX: &'static str = "/logs/";
    const WHAT: (&'static str, &'static str) = ("logs", "logs.db");

    fn apply(&self, w: &LogWrite, revision: Option<i64>) -> Result<(), LogsError> {
        LogStore::apply(self, w, revision.map(|r| r * ID_STRIDE))
    }
    fn applied_revision(&self) -> Result<i64, LogsError> {
        LogStore::applied_revision(self)
    }
    fn set_applied_revision(&self, rev: i64) -> Result<(), LogsError> {
        LogStore::set_applied_revision(self, rev)
    }
    fn snapshot(&self, dest: &std::path::Path) -> Result<(), LogsError> {
        LogStore::snapshot(self, dest)
    }
    fn restore(&self, src: &std::path::Path) -> Result<(), LogsError> {
        LogStore::restore(self, src)
    }
    fn file(&self) -> Option<&std::path::Path> {
        LogStore::file(self)
    }
    fn backend(message: String) -> LogsError {
        LogsError::Backend(message)
    }
    fn is_backend(e: &LogsError) -> bool {
        matches!(e, LogsError::Backend(_))
    }
    fn describe(e: &LogsError) -> String {
        e.to_string()
    }
    /// A PutLogEvents batch splits into halves of its events.
    fn split(w: &LogWrite) -> Option<(LogWrite, LogWrite)> {
        let LogOp::Put { stream, events } = &w.op else {
            return None;
        };
        if events.len() < 2 {
            return None;
        }
        let (a, b) = events.split_at(events.len() / 2);
        let half = |events: &[(i64, String)]| LogWrite {
            op: LogOp::Put {
                stream: stream.clone(),
                events: events.to_vec(),
            },
            ..w.clone()
        };
        Some((half(a), half(b)))
    }
}

/// Trims the logs feed (the leader's housekeeping); see `feed::trim`.
pub async fn trim(store: &dyn Store, oldest_kept: i64) -> Result<usize, StoreError> {
    crate::feed::trim::<LogStore>(store, oldest_kept).await
}
