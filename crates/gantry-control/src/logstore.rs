//! Gantry's CloudWatch Logs data: log groups, streams and events in their own SQLite file
//! (append-heavy, queried by time; kept out of the revisioned state store). Retention is
//! enforced by `expire`, which the server runs periodically. Every write is also a `LogWrite`
//! value, so a cluster's servers can each apply the same writes in the same order
//! (`logfeed`).

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LogsError {
    #[error("The specified log group already exists")]
    GroupExists,
    #[error("The specified log stream already exists")]
    StreamExists,
    #[error("The specified log group does not exist.")]
    NoGroup,
    #[error("The specified log stream does not exist.")]
    NoStream,
    #[error("{0}")]
    Invalid(String),
    #[error("log store: {0}")]
    Backend(String),
}

impl LogsError {
    pub fn aws_type(&self) -> &'static str {
        match self {
            LogsError::GroupExists | LogsError::StreamExists => "ResourceAlreadyExistsException",
            LogsError::NoGroup | LogsError::NoStream => "ResourceNotFoundException",
            LogsError::Invalid(_) => "InvalidParameterException",
            LogsError::Backend(_) => "ServiceUnavailableException",
        }
    }
}

fn be(e: rusqlite::Error) -> LogsError {
    LogsError::Backend(e.to_string())
}

pub const RETENTION_DAYS: &[i64] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
];

#[derive(Debug, Clone, PartialEq)]
pub struct LogGroup {
    pub name: String,
    pub created_ms: i64,
    pub retention_days: Option<i64>,
    pub stored_bytes: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogStream {
    pub name: String,
    pub created_ms: i64,
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    pub last_ingestion_ms: Option<i64>,
    pub stored_bytes: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub id: i64,
    pub stream: String,
    pub timestamp: i64,
    pub ingestion_ms: i64,
    pub message: String,
}

/// One write to the logs, as a value: applied directly (one server) or through the cluster's
/// feed (every server, in the same order). `now_ms` is the submitting server's clock, so
/// every copy records the same creation and ingestion times.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogWrite {
    pub account: String,
    pub region: String,
    pub group: String,
    pub now_ms: i64,
    pub op: LogOp,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LogOp {
    CreateGroup,
    DeleteGroup,
    SetRetention {
        days: Option<i64>,
    },
    CreateStream {
        stream: String,
    },
    DeleteStream {
        stream: String,
    },
    /// The agent's streams (and awslogs-create-group): created if missing.
    EnsureStream {
        stream: String,
        create_group: bool,
    },
    Put {
        stream: String,
        events: Vec<(i64, String)>,
    },
}

impl LogWrite {
    pub fn new(s: Scope, group: &str, now_ms: i64, op: LogOp) -> LogWrite {
        LogWrite {
            account: s.0.to_string(),
            region: s.1.to_string(),
            group: group.to_string(),
            now_ms,
            op,
        }
    }
}

pub struct LogStore {
    conn: Mutex<Connection>,
    /// The database file (None: in memory).
    file: Option<std::path::PathBuf>,
}

/// The (account, region) a log group lives in.
pub type Scope<'a> = (&'a str, &'a str);

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, LogsError> {
        Self::init(Connection::open(path).map_err(be)?, Some(path.to_path_buf()))
    }

    pub fn in_memory() -> Result<LogStore, LogsError> {
        Self::init(Connection::open_in_memory().map_err(be)?, None)
    }

    fn init(conn: Connection, file: Option<std::path::PathBuf>) -> Result<LogStore, LogsError> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;
             CREATE TABLE IF NOT EXISTS groups (acct TEXT, region TEXT, name TEXT, created INTEGER, retention INTEGER, PRIMARY KEY (acct, region, name));
             CREATE TABLE IF NOT EXISTS streams (acct TEXT, region TEXT, grp TEXT, name TEXT, created INTEGER, PRIMARY KEY (acct, region, grp, name));
             CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, acct TEXT, region TEXT, grp TEXT, stream TEXT, ts INTEGER, ingested INTEGER, message TEXT);
             CREATE INDEX IF NOT EXISTS events_stream ON events (acct, region, grp, stream, ts, id);
             CREATE INDEX IF NOT EXISTS events_group ON events (acct, region, grp, ts, id);",
        )
        .map_err(be)?;
        conn.execute_batch(crate::feed::position::TABLE).map_err(be)?;
        Ok(LogStore {
            conn: Mutex::new(conn),
            file,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn validate_group_name(name: &str) -> Result<(), LogsError> {
        let ok = !name.is_empty()
            && name.len() <= 512
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-/.#".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(LogsError::Invalid(format!(
                "Invalid log group name {name:?}: 1-512 characters of a-z, A-Z, 0-9, '_', '-', '/', '.', '#'."
            )))
        }
    }

    pub fn validate_stream_name(name: &str) -> Result<(), LogsError> {
        if name.is_empty() || name.len() > 512 || name.contains(':') || name.contains('*') {
            return Err(LogsError::Invalid(format!(
                "Invalid log stream name {name:?}: 1-512 characters, no ':' or '*'."
            )));
        }
        Ok(())
    }

    pub fn create_group(&self, s: Scope, name: &str, now_ms: i64) -> Result<(), LogsError> {
        Self::validate_group_name(name)?;
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO groups (acct, region, name, created, retention) VALUES (?1, ?2, ?3, ?4, NULL)",
                params![s.0, s.1, name, now_ms],
            )
            .map_err(be)?;
        if n == 0 {
            Err(LogsError::GroupExists)
        } else {
            Ok(())
        }
    }

    pub fn group_exists(&self, s: Scope, name: &str) -> Result<bool, LogsError> {
        self.conn()
            .query_row(
                "SELECT 1 FROM groups WHERE acct=?1 AND region=?2 AND name=?3",
                params![s.0, s.1, name],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(be)
    }

    pub fn delete_group(&self, s: Scope, name: &str) -> Result<(), LogsError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(be)?;
        let n = tx
            .execute(
                "DELETE FROM groups WHERE acct=?1 AND region=?2 AND name=?3",
                params![s.0, s.1, name],
            )
            .map_err(be)?;
        if n == 0 {
            return Err(LogsError::NoGroup);
        }
        tx.execute(
            "DELETE FROM streams WHERE acct=?1 AND region=?2 AND grp=?3",
            params![s.0, s.1, name],
        )
        .map_err(be)?;
        tx.execute(
            "DELETE FROM events WHERE acct=?1 AND region=?2 AND grp=?3",
            params![s.0, s.1, name],
        )
        .map_err(be)?;
        tx.commit().map_err(be)
    }

    pub fn validate_retention(days: i64) -> Result<(), LogsError> {
        if RETENTION_DAYS.contains(&days) {
            return Ok(());
        }
        Err(LogsError::Invalid(format!(
            "1 validation error detected: Value '{days}' at 'retentionInDays' failed to satisfy constraint: Member must satisfy enum value set: {RETENTION_DAYS:?}"
        )))
    }

    pub fn set_retention(&self, s: Scope, name: &str, days: Option<i64>) -> Result<(), LogsError> {
        if let Some(d) = days {
            Self::validate_retention(d)?;
        }
        let n = self
            .conn()
            .execute(
                "UPDATE groups SET retention=?4 WHERE acct=?1 AND region=?2 AND name=?3",
                params![s.0, s.1, name, days],
            )
            .map_err(be)?;
        if n == 0 {
            Err(LogsError::NoGroup)
        } else {
            Ok(())
        }
    }

    /// Groups whose name starts with `prefix`, after `after` (pagination), at most `limit`.
    pub fn groups(
        &self,
        s: Scope,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogGroup>, LogsError> {
        let c = self.conn();
        let mut stmt = c
            .prepare(
                "SELECT g.name, g.created, g.retention, COALESCE((SELECT SUM(LENGTH(message)) FROM events e WHERE e.acct=g.acct AND e.region=g.region AND e.grp=g.name), 0)
                 FROM groups g WHERE acct=?1 AND region=?2 AND substr(name, 1, length(?3)) = ?3 AND name > ?4 ORDER BY name LIMIT ?5",
            )
            .map_err(be)?;
        let rows = stmt
            .query_map(params![s.0, s.1, prefix, after.unwrap_or(""), limit as i64], |r| {
                Ok(LogGroup {
                    name: r.get(0)?,
                    created_ms: r.get(1)?,
                    retention_days: r.get(2)?,
                    stored_bytes: r.get(3)?,
                })
            })
            .map_err(be)?;
        rows.collect::<rusqlite::Result<_>>().map_err(be)
    }

    pub fn create_stream(&self, s: Scope, group: &str, name: &str, now_ms: i64) -> Result<(), LogsError> {
        Self::validate_stream_name(name)?;
        if !self.group_exists(s, group)? {
            return Err(LogsError::NoGroup);
        }
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO streams (acct, region, grp, name, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.0, s.1, group, name, now_ms],
            )
            .map_err(be)?;
        if n == 0 {
            Err(LogsError::StreamExists)
        } else {
            Ok(())
        }
    }

    pub fn delete_stream(&self, s: Scope, group: &str, name: &str) -> Result<(), LogsError> {
        let c = self.conn();
        let n = c
            .execute(
                "DELETE FROM streams WHERE acct=?1 AND region=?2 AND grp=?3 AND name=?4",
                params![s.0, s.1, group, name],
            )
            .map_err(be)?;
        if n == 0 {
            return Err(LogsError::NoStream);
        }
        c.execute(
            "DELETE FROM events WHERE acct=?1 AND region=?2 AND grp=?3 AND stream=?4",
            params![s.0, s.1, group, name],
        )
        .map_err(be)?;
        Ok(())
    }

    fn stream_exists(c: &Connection, s: Scope, group: &str, name: &str) -> Result<bool, LogsError> {
        c.query_row(
            "SELECT 1 FROM streams WHERE acct=?1 AND region=?2 AND grp=?3 AND name=?4",
            params![s.0, s.1, group, name],
            |_| Ok(()),
        )
        .optional()
        .map(|o| o.is_some())
        .map_err(be)
    }

    pub fn streams(
        &self,
        s: Scope,
        group: &str,
        prefix: &str,
        by_last_event: bool,
        descending: bool,
    ) -> Result<Vec<LogStream>, LogsError> {
        if !self.group_exists(s, group)? {
            return Err(LogsError::NoGroup);
        }
        let c = self.conn();
        let mut stmt = c
            .prepare(
                "SELECT st.name, st.created, MIN(e.ts), MAX(e.ts), MAX(e.ingested), COALESCE(SUM(LENGTH(e.message)), 0)
                 FROM streams st LEFT JOIN events e ON e.acct=st.acct AND e.region=st.region AND e.grp=st.grp AND e.stream=st.name
                 WHERE st.acct=?1 AND st.region=?2 AND st.grp=?3 AND substr(st.name, 1, length(?4)) = ?4
                 GROUP BY st.name ORDER BY st.name",
            )
            .map_err(be)?;
        let rows = stmt
            .query_map(params![s.0, s.1, group, prefix], |r| {
                Ok(LogStream {
                    name: r.get(0)?,
                    created_ms: r.get(1)?,
                    first_event_ms: r.get(2)?,
                    last_event_ms: r.get(3)?,
                    last_ingestion_ms: r.get(4)?,
                    stored_bytes: r.get(5)?,
                })
            })
            .map_err(be)?;
        let mut v: Vec<LogStream> = rows.collect::<rusqlite::Result<_>>().map_err(be)?;
        if by_last_event {
            v.sort_by_key(|x| x.last_event_ms.unwrap_or(0));
        }
        if descending {
            v.reverse();
        }
        Ok(v)
    }

    /// Appends events (already validated for order and age by the caller) to an existing stream.
    pub fn put(
        &self,
        s: Scope,
        group: &str,
        stream: &str,
        events: &[(i64, String)],
        now_ms: i64,
    ) -> Result<(), LogsError> {
        self.put_with_ids(s, group, stream, events, now_ms, None)
    }

    /// `put`, the events numbered from `first_id` when given (a replicated write: every copy
    /// numbers them alike, so paging tokens work on any server; a repeat is ignored).
    fn put_with_ids(
        &self,
        s: Scope,
        group: &str,
        stream: &str,
        events: &[(i64, String)],
        now_ms: i64,
        first_id: Option<i64>,
    ) -> Result<(), LogsError> {
        let mut c = self.conn();
        if !self.group_exists_in(&c, s, group)? {
            return Err(LogsError::NoGroup);
        }
        if !Self::stream_exists(&c, s, group, stream)? {
            return Err(LogsError::NoStream);
        }
        let tx = c.transaction().map_err(be)?;
        {
            let mut stmt = tx
                .prepare("INSERT OR IGNORE INTO events (id, acct, region, grp, stream, ts, ingested, message) VALUES (?8, ?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(be)?;
            for (i, (ts, m)) in events.iter().enumerate() {
                let id = first_id.map(|f| f + i as i64);
                stmt.execute(params![s.0, s.1, group, stream, ts, now_ms, m, id])
                    .map_err(be)?;
            }
        }
        tx.commit().map_err(be)
    }

    fn group_exists_in(&self, c: &Connection, s: Scope, name: &str) -> Result<bool, LogsError> {
        c.query_row(
            "SELECT 1 FROM groups WHERE acct=?1 AND region=?2 AND name=?3",
            params![s.0, s.1, name],
            |_| Ok(()),
        )
        .optional()
        .map(|o| o.is_some())
        .map_err(be)
    }

    /// Creates the group and stream if needed (awslogs-create-group / the agent's streams).
    pub fn ensure_stream(
        &self,
        s: Scope,
        group: &str,
        stream: &str,
        create_group: bool,
        now_ms: i64,
    ) -> Result<(), LogsError> {
        if create_group {
            match self.create_group(s, group, now_ms) {
                Ok(()) | Err(LogsError::GroupExists) => {}
                Err(e) => return Err(e),
            }
        }
        match self.create_stream(s, group, stream, now_ms) {
            Ok(()) | Err(LogsError::StreamExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Events of one stream in [start, end), ordered by time; `after_id`/`before_id` page
    /// forward/backward from a token.
    #[allow(clippy::too_many_arguments)]
    pub fn stream_events(
        &self,
        s: Scope,
        group: &str,
        stream: &str,
        start: Option<i64>,
        end: Option<i64>,
        from_head: bool,
        cursor: Option<(bool, i64)>,
        limit: usize,
    ) -> Result<Vec<LogEvent>, LogsError> {
        let c = self.conn();
        if !self.group_exists_in(&c, s, group)? {
            return Err(LogsError::NoGroup);
        }
        if !Self::stream_exists(&c, s, group, stream)? {
            return Err(LogsError::NoStream);
        }
        let (start, end) = (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX));
        // Forward: oldest first after the cursor; backward (default without startFromHead):
        // the newest `limit` before the cursor, returned oldest first.
        let forward = match cursor {
            Some((fwd, _)) => fwd,
            None => from_head,
        };
        let (cmp, order) = if forward {
            ("id > ?6", "ASC")
        } else {
            ("id < ?6", "DESC")
        };
        let cur = match cursor {
            Some((_, id)) => id,
            None if forward => i64::MIN,
            None => i64::MAX,
        };
        let sql = format!(
            "SELECT id, stream, ts, ingested, message FROM events WHERE acct=?1 AND region=?2 AND grp=?3 AND stream=?4 AND ts >= ?5 AND ts < ?7 AND {cmp}
             ORDER BY ts {order}, id {order} LIMIT ?8"
        );
        let mut stmt = c.prepare(&sql).map_err(be)?;
        let rows = stmt
            .query_map(params![s.0, s.1, group, stream, start, cur, end, limit as i64], |r| {
                Ok(LogEvent {
                    id: r.get(0)?,
                    stream: r.get(1)?,
                    timestamp: r.get(2)?,
                    ingestion_ms: r.get(3)?,
                    message: r.get(4)?,
                })
            })
            .map_err(be)?;
        let mut v: Vec<LogEvent> = rows.collect::<rusqlite::Result<_>>().map_err(be)?;
        if !forward {
            v.reverse();
        }
        Ok(v)
    }

    /// Events across a group's streams (optionally some of them) in time order, after `after_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn group_events(
        &self,
        s: Scope,
        group: &str,
        streams: Option<&[String]>,
        stream_prefix: Option<&str>,
        start: Option<i64>,
        end: Option<i64>,
        after: Option<(i64, i64)>,
        limit: usize,
        matches: impl Fn(&str) -> bool,
    ) -> Result<(Vec<LogEvent>, bool), LogsError> {
        let c = self.conn();
        if !self.group_exists_in(&c, s, group)? {
            return Err(LogsError::NoGroup);
        }
        let (start, end) = (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX));
        let (ats, aid) = after.unwrap_or((i64::MIN, i64::MIN));
        let mut stmt = c
            .prepare(
                "SELECT id, stream, ts, ingested, message FROM events WHERE acct=?1 AND region=?2 AND grp=?3 AND ts >= ?4 AND ts < ?5
                 AND (ts > ?6 OR (ts = ?6 AND id > ?7)) ORDER BY ts, id",
            )
            .map_err(be)?;
        let rows = stmt
            .query_map(params![s.0, s.1, group, start, end, ats, aid], |r| {
                Ok(LogEvent {
                    id: r.get(0)?,
                    stream: r.get(1)?,
                    timestamp: r.get(2)?,
                    ingestion_ms: r.get(3)?,
                    message: r.get(4)?,
                })
            })
            .map_err(be)?;
        let mut out = Vec::new();
        for r in rows {
            let e = r.map_err(be)?;
            if streams.is_some_and(|ss| !ss.contains(&e.stream))
                || stream_prefix.is_some_and(|p| !e.stream.starts_with(p))
            {
                continue;
            }
            if !matches(&e.message) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(e);
        }
        Ok((out, false))
    }

    /// Applies one write. `first_id` numbers a Put's events (see `put_with_ids`).
    pub fn apply(&self, w: &LogWrite, first_id: Option<i64>) -> Result<(), LogsError> {
        let s = (w.account.as_str(), w.region.as_str());
        let g = w.group.as_str();
        match &w.op {
            LogOp::CreateGroup => self.create_group(s, g, w.now_ms),
            LogOp::DeleteGroup => self.delete_group(s, g),
            LogOp::SetRetention { days } => self.set_retention(s, g, *days),
            LogOp::CreateStream { stream } => self.create_stream(s, g, stream, w.now_ms),
            LogOp::DeleteStream { stream } => self.delete_stream(s, g, stream),
            LogOp::EnsureStream { stream, create_group } => self.ensure_stream(s, g, stream, *create_group, w.now_ms),
            LogOp::Put { stream, events } => self.put_with_ids(s, g, stream, events, w.now_ms, first_id),
        }
    }

    /// The last feed revision this copy has applied (0: none).
    pub fn applied_revision(&self) -> Result<i64, LogsError> {
        crate::feed::position::read(&self.conn()).map_err(be)
    }

    pub fn set_applied_revision(&self, rev: i64) -> Result<(), LogsError> {
        crate::feed::position::advance(&self.conn(), rev).map_err(be)
    }

    /// Writes the whole copy to `dest` (see `feed::position::snapshot`).
    pub fn snapshot(&self, dest: &Path) -> Result<(), LogsError> {
        match &self.file {
            Some(f) => crate::feed::position::snapshot(&Connection::open(f).map_err(be)?, dest),
            None => crate::feed::position::snapshot(&self.conn(), dest),
        }
        .map_err(be)
    }

    /// Replaces the whole copy with a snapshot.
    pub fn restore(&self, src: &Path) -> Result<(), LogsError> {
        crate::feed::position::restore(&mut self.conn(), src).map_err(be)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Deletes events older than each group's retention. Returns how many went.
    pub fn expire(&self, now_ms: i64) -> Result<usize, LogsError> {
        let c = self.conn();
        c.execute(
            "DELETE FROM events WHERE EXISTS (SELECT 1 FROM groups g WHERE g.acct=events.acct AND g.region=events.region AND g.name=events.grp
               AND g.retention IS NOT NULL AND events.ts < ?1 - g.retention * 86400000)",
            params![now_ms],
        )
        .map_err(be)
    }
}

/// CloudWatch Logs' filter pattern for unstructured text: terms that must all appear, "quoted
/// phrases", `?term` alternatives (any of them), `-term` exclusions. Case-sensitive, as AWS's.
pub fn matches_filter(pattern: &str, message: &str) -> bool {
    let mut terms = Vec::new();
    let mut rest = pattern.trim();
    while !rest.is_empty() {
        let (neg, optional, body) = if let Some(r) = rest.strip_prefix('-') {
            (true, false, r)
        } else if let Some(r) = rest.strip_prefix('?') {
            (false, true, r)
        } else {
            (false, false, rest)
        };
        let (term, next) = if let Some(q) = body.strip_prefix('"') {
            match q.find('"') {
                Some(i) => (&q[..i], &q[i + 1..]),
                None => (q, ""),
            }
        } else {
            match body.find(char::is_whitespace) {
                Some(i) => (&body[..i], &body[i..]),
                None => (body, ""),
            }
        };
        if !term.is_empty() {
            terms.push((neg, optional, term));
        }
        rest = next.trim_start();
    }
    if terms.is_empty() {
        return true;
    }
    let optionals: Vec<_> = terms.iter().filter(|t| t.1).collect();
    if !optionals.is_empty() && !optionals.iter().any(|t| message.contains(t.2)) {
        return false;
    }
    terms
        .iter()
        .filter(|t| !t.1)
        .all(|(neg, _, term)| message.contains(term) != *neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Scope = ("123", "us-east-1");

    #[test]
    fn groups_streams_events() {
        let l = LogStore::in_memory().unwrap();
        l.create_group(S, "/app", 1).unwrap();
        assert_eq!(l.create_group(S, "/app", 1), Err(LogsError::GroupExists));
        assert!(l.create_group(S, "bad name", 1).is_err());
        assert_eq!(l.create_stream(S, "/nope", "s", 1), Err(LogsError::NoGroup));
        l.create_stream(S, "/app", "s1", 1).unwrap();
        l.put(
            S,
            "/app",
            "s1",
            &[(10, "a".into()), (20, "b".into()), (30, "c".into())],
            100,
        )
        .unwrap();
        let fwd = l.stream_events(S, "/app", "s1", None, None, true, None, 2).unwrap();
        assert_eq!(fwd.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let more = l
            .stream_events(S, "/app", "s1", None, None, true, Some((true, fwd[1].id)), 2)
            .unwrap();
        assert_eq!(more.len(), 1);
        let tail = l.stream_events(S, "/app", "s1", None, None, false, None, 2).unwrap();
        assert_eq!(tail.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        let (ev, more) = l
            .group_events(S, "/app", None, None, Some(15), None, None, 10, |m| m != "c")
            .unwrap();
        assert_eq!((ev.len(), more), (1, false));
        l.set_retention(S, "/app", Some(1)).unwrap();
        assert!(l.set_retention(S, "/app", Some(2)).is_err());
        assert_eq!(l.expire(86_400_000 + 25).unwrap(), 2, "events older than a day go");
        l.delete_group(S, "/app").unwrap();
        assert_eq!(l.delete_group(S, "/app"), Err(LogsError::NoGroup));
    }

    #[test]
    fn filter_patterns() {
        assert!(matches_filter("", "anything"));
        assert!(matches_filter("ERROR", "an ERROR here"));
        assert!(!matches_filter("ERROR", "an error here"));
        assert!(matches_filter("ERROR disk", "ERROR: disk full"));
        assert!(!matches_filter("ERROR disk", "ERROR: cpu"));
        assert!(matches_filter("\"disk full\"", "ERROR: disk full"));
        assert!(matches_filter("?ERROR ?WARN", "WARN low"));
        assert!(!matches_filter("?ERROR ?WARN", "INFO ok"));
        assert!(matches_filter("ERROR -retry", "ERROR fatal"));
        assert!(!matches_filter("ERROR -retry", "ERROR will retry"));
    }
}
