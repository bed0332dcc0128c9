//! Gantry's CloudWatch metric data: series and their datapoints in their own SQLite file
//! (append-heavy, read by time range; kept out of the revisioned state store, like the logs).
//! Every write is a `MetricWrite` value, so a cluster's servers can each apply the same
//! writes in the same order (`crate::logfeed`).
//!
//! Retention is CloudWatch's: points finer than a minute are kept 3 hours, then rolled up to
//! 1-minute points kept 15 days, 5-minute points kept 63 days and 1-hour points kept 455 days
//! (`roll_up`). A series' size is thereby bounded whatever rate it is published at.

use super::stats::Agg;
use super::MetricsError;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetricKey {
    pub namespace: String,
    pub name: String,
    /// Sorted by name: a metric is its namespace, name and exact set of dimensions.
    pub dims: Vec<(String, String)>,
}

/// One datapoint as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub key: MetricKey,
    pub ts_ms: i64,
    pub unit: String,
    /// 1 (high resolution) or 60 seconds.
    pub resolution: i64,
    pub agg: Agg,
}

/// One PutMetricData (or an agent's samples), as a value the feed carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricWrite {
    pub account: String,
    pub region: String,
    pub data: Vec<Published>,
}

/// A stored datapoint of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub ts_ms: i64,
    pub unit: String,
    pub agg: Agg,
}

/// The (account, region) metrics live in.
pub type Scope<'a> = (&'a str, &'a str);

/// Retention tiers: points of a resolution finer than `resolution` and older than `after_ms`
/// are rolled up to `resolution`; the last tier's points are deleted after it.
const TIERS: &[(i64, i64)] = &[(60, 3 * 3_600_000), (300, 15 * 86_400_000), (3_600, 63 * 86_400_000)];
const DELETE_AFTER_MS: i64 = 455 * 86_400_000;

pub struct MetricStore {
    conn: Mutex<Connection>,
    /// The database file (None: in memory).
    file: Option<std::path::PathBuf>,
}

fn be(e: rusqlite::Error) -> MetricsError {
    MetricsError::internal(format!("metric store: {e}"))
}

fn dims_text(dims: &[(String, String)]) -> String {
    serde_json::to_string(dims).expect("strings serialise")
}

impl MetricStore {
    pub fn open(path: &Path) -> Result<MetricStore, MetricsError> {
        Self::init(Connection::open(path).map_err(be)?, Some(path.to_path_buf()))
    }

    pub fn in_memory() -> Result<MetricStore, MetricsError> {
        Self::init(Connection::open_in_memory().map_err(be)?, None)
    }

    fn init(conn: Connection, file: Option<std::path::PathBuf>) -> Result<MetricStore, MetricsError> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, acct TEXT, region TEXT, namespace TEXT,
               name TEXT, dims TEXT, last_ms INTEGER, UNIQUE (acct, region, namespace, name, dims));
             CREATE TABLE IF NOT EXISTS points (series INTEGER, ts INTEGER, unit TEXT, res INTEGER, agg TEXT);
             CREATE INDEX IF NOT EXISTS points_by_series ON points (series, ts);
             CREATE INDEX IF NOT EXISTS points_by_age ON points (res, ts);",
        )
        .map_err(be)?;
        conn.execute_batch(crate::feed::position::TABLE).map_err(be)?;
        Ok(MetricStore {
            conn: Mutex::new(conn),
            file,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a write's datapoints in one transaction, with the feed revision it came from
    /// (so a copy applies each feed entry exactly once, crash or not).
    pub fn apply(&self, w: &MetricWrite, revision: Option<i64>) -> Result<(), MetricsError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(be)?;
        if let Some(rev) = revision {
            crate::feed::position::advance(&tx, rev).map_err(be)?;
        }
        for p in &w.data {
            let dims = dims_text(&p.key.dims);
            tx.execute(
                "INSERT INTO series (acct, region, namespace, name, dims, last_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO UPDATE SET last_ms = MAX(last_ms, ?6)",
                params![w.account, w.region, p.key.namespace, p.key.name, dims, p.ts_ms],
            )
            .map_err(be)?;
            let id: i64 = tx
                .query_row(
                    "SELECT id FROM series WHERE acct=?1 AND region=?2 AND namespace=?3 AND name=?4 AND dims=?5",
                    params![w.account, w.region, p.key.namespace, p.key.name, dims],
                    |r| r.get(0),
                )
                .map_err(be)?;
            let agg = serde_json::to_string(&p.agg).map_err(|e| MetricsError::internal(e.to_string()))?;
            tx.execute(
                "INSERT INTO points (series, ts, unit, res, agg) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, p.ts_ms, p.unit, p.resolution, agg],
            )
            .map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    /// A series' datapoints with timestamps in [from, to), oldest first.
    pub fn points(&self, s: Scope, key: &MetricKey, from_ms: i64, to_ms: i64) -> Result<Vec<Point>, MetricsError> {
        let c = self.conn();
        let mut q = c
            .prepare_cached(
                "SELECT p.ts, p.unit, p.agg FROM series s JOIN points p ON p.series = s.id
                 WHERE s.acct=?1 AND s.region=?2 AND s.namespace=?3 AND s.name=?4 AND s.dims=?5 AND p.ts >= ?6 AND p.ts < ?7
                 ORDER BY p.ts",
            )
            .map_err(be)?;
        let rows = q
            .query_map(
                params![s.0, s.1, key.namespace, key.name, dims_text(&key.dims), from_ms, to_ms],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )
            .map_err(be)?;
        let mut out = Vec::new();
        for row in rows {
            let (ts_ms, unit, agg) = row.map_err(be)?;
            let agg = serde_json::from_str(&agg).map_err(|e| MetricsError::internal(format!("stored point: {e}")))?;
            out.push(Point { ts_ms, unit, agg });
        }
        Ok(out)
    }

    /// The series of a scope in id order after `after_id`, with their newest timestamp, up to
    /// `limit`; filtering is the caller's.
    pub fn series(&self, s: Scope, after_id: i64, limit: usize) -> Result<Vec<(i64, MetricKey, i64)>, MetricsError> {
        let c = self.conn();
        let mut q = c
            .prepare_cached(
                "SELECT id, namespace, name, dims, last_ms FROM series WHERE acct=?1 AND region=?2 AND id > ?3
                 ORDER BY id LIMIT ?4",
            )
            .map_err(be)?;
        let rows = q
            .query_map(params![s.0, s.1, after_id, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(be)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, namespace, name, dims, last_ms) = row.map_err(be)?;
            let dims =
                serde_json::from_str(&dims).map_err(|e| MetricsError::internal(format!("stored series: {e}")))?;
            out.push((id, MetricKey { namespace, name, dims }, last_ms));
        }
        Ok(out)
    }

    /// Rolls points past each tier's age up into that tier's resolution and deletes what is
    /// past the last. Returns how many rows went (merged or deleted).
    pub fn roll_up(&self, now_ms: i64) -> Result<usize, MetricsError> {
        let mut gone = 0;
        for &(resolution, after_ms) in TIERS {
            gone += self.roll_tier(resolution, now_ms - after_ms)?;
        }
        let c = self.conn();
        gone += c
            .execute("DELETE FROM points WHERE ts < ?1", params![now_ms - DELETE_AFTER_MS])
            .map_err(be)?;
        c.execute(
            "DELETE FROM series WHERE last_ms < ?1 AND NOT EXISTS (SELECT 1 FROM points WHERE series = series.id)",
            params![now_ms - DELETE_AFTER_MS],
        )
        .map_err(be)?;
        Ok(gone)
    }

    /// Merges points finer than `resolution` (seconds) older than `before_ms` into one point
    /// per series, unit and `resolution`-aligned period.
    fn roll_tier(&self, resolution: i64, before_ms: i64) -> Result<usize, MetricsError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(be)?;
        let rows: Vec<(i64, i64, String, String)> = {
            let mut q = tx
                .prepare("SELECT series, ts, unit, agg FROM points WHERE res < ?1 AND ts < ?2")
                .map_err(be)?;
            let r = q
                .query_map(params![resolution, before_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(be)?;
            r.collect::<Result<_, _>>().map_err(be)?
        };
        let period = resolution * 1000;
        let mut merged: std::collections::BTreeMap<(i64, i64, String), Agg> = Default::default();
        for (series, ts, unit, agg) in &rows {
            let agg: Agg = serde_json::from_str(agg).map_err(|e| MetricsError::internal(e.to_string()))?;
            let k = (*series, ts.div_euclid(period) * period, unit.clone());
            match merged.get_mut(&k) {
                Some(a) => a.merge(&agg),
                None => {
                    merged.insert(k, agg);
                }
            }
        }
        tx.execute(
            "DELETE FROM points WHERE res < ?1 AND ts < ?2",
            params![resolution, before_ms],
        )
        .map_err(be)?;
        for ((series, ts, unit), agg) in &merged {
            let agg = serde_json::to_string(agg).map_err(|e| MetricsError::internal(e.to_string()))?;
            tx.execute(
                "INSERT INTO points (series, ts, unit, res, agg) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![series, ts, unit, resolution, agg],
            )
            .map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(rows.len() - merged.len())
    }

    pub fn applied_revision(&self) -> Result<i64, MetricsError> {
        crate::feed::position::read(&self.conn()).map_err(be)
    }

    pub fn set_applied_revision(&self, rev: i64) -> Result<(), MetricsError> {
        crate::feed::position::advance(&self.conn(), rev).map_err(be)
    }

    /// Writes the whole copy to `dest` (see `feed::position::snapshot`).
    pub fn snapshot(&self, dest: &Path) -> Result<(), MetricsError> {
        match &self.file {
            Some(f) => crate::feed::position::snapshot(&Connection::open(f).map_err(be)?, dest),
            None => crate::feed::position::snapshot(&self.conn(), dest),
        }
        .map_err(be)
    }

    /// Replaces the whole copy with a snapshot.
    pub fn restore(&self, src: &Path) -> Result<(), MetricsError> {
        crate::feed::position::restore(&mut self.conn(), src).map_err(be)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Gives deleted pages back to the file system (the retention benchmark's measure).
    pub fn vacuum(&self) -> Result<(), MetricsError> {
        self.conn().execute_batch("VACUUM").map_err(be)
    }

    /// Rows of datapoints held, for tests and the retention claim.
    pub fn point_count(&self) -> Result<i64, MetricsError> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM points", [], |r| r.get(0))
            .map_err(be)
    }
}
