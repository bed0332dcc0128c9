//! The control plane: ECS's clusters, task definitions and tasks as records in the store, and
//! the operations on them. Level-triggered: the agent watches task records and moves them
//! through the lifecycle; every write is compare-and-swap on the record's revision.

pub mod account_settings;
pub mod acm;
pub mod alarms;
pub mod autoscaling;
pub mod capacity_providers;
pub mod cloudmap;
mod clusters;
pub mod controllers;
pub mod cost;
pub mod deploy;
pub mod ec2;
pub mod elb;
pub mod exec;
pub mod fanout;
pub mod feed;
pub mod iam;
pub mod instances;
pub mod logfeed;
pub mod logstore;
pub mod metrics;
pub mod nodes;
pub mod parameters;
pub mod placement;
pub mod quotas;
pub mod recent_tasks;
pub mod record_cache;
pub mod records;
pub mod reported_tasks;
pub mod run_task;
pub mod secrets;
pub mod service_controller;
pub mod service_deployments;
pub mod service_lb;
pub mod service_registry;
pub mod services;
pub mod task_sets;
mod taskdefs;
pub mod tasks;
pub mod traffic_shift;

pub use clusters::{validate_cluster_configuration, ClusterOptions};
pub use run_task::RunTaskRequest;
pub use tasks::{ListTasks, TaskRecord, TaskSpecContainer, TASKS_PREFIX};

use gantry_store::{Store, StoreError};
use gantry_types::arn::Scope;
use gantry_types::EcsError;
use std::sync::Arc;

/// Time comes in through here so tests can fix it.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

pub fn store_err(e: StoreError) -> EcsError {
    EcsError::Server(format!("state store: {e}"))
}

/// A key suffix for time-ordered records (history, activities): the time, then a sequence
/// number (records of the same millisecond keep the order this process wrote them in), then
/// randomness (no two writers collide).
pub fn ordered_key(now_ms: i64) -> String {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{now_ms:013}-{n:010}-{}", random_hex(4))
}

/// A random id in UUID form (8-4-4-4-12 hex), as AWS request, event and attachment ids look.
pub fn random_uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom is readable");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone)]
pub struct Control {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The nodes' watches of their task records, over one store watch.
    pub task_watches: fanout::TaskFanout,
    /// The task records written or watched most recently (nodes' writes are checked against them).
    pub recent_tasks: recent_tasks::RecentTasks,
    /// The records of the tasks each node reports the usage of.
    pub reported_tasks: reported_tasks::ReportedTasks,
    /// Every task and every service record as last read, reused while its revision is
    /// unchanged.
    pub task_cache: record_cache::RecordCache<TaskRecord>,
    pub service_cache: record_cache::RecordCache<services::ServiceRecord>,
    /// What tasks cost, for metering and the cost gauges.
    pub prices: cost::Prices,
    /// Service quotas: task launch rate, services per cluster, tasks per service.
    pub quotas: Arc<quotas::Quotas>,
    /// Security groups and their members as nodes enforce them, over one watch of each.
    pub security: ec2::SecuritySource,
    /// The signing keys requests are checked against, over one watch.
    pub signing_keys: iam::SigningKeys,
}

pub(crate) fn prefix(scope: &Scope) -> String {
    format!("/ecs/{}/{}/", scope.account, scope.region)
}

impl Control {
    /// ACM over the same store and clock.
    pub fn acm(&self) -> acm::Acm {
        acm::Acm::new(self.store.clone(), self.clock.clone())
    }

    /// IAM over the same store and clock.
    pub fn iam(&self) -> iam::Iam {
        iam::Iam::new(self.store.clone(), self.clock.clone())
    }

    /// EC2's networking subset (VPC, subnets, security groups) over the same store.
    pub fn ec2(&self) -> ec2::Ec2 {
        ec2::Ec2::new(self.store.clone(), self.clock.clone())
    }

    /// Cloud Map over the same store and clock.
    pub fn cloud_map(&self) -> cloudmap::CloudMap {
        cloudmap::CloudMap::new(self.store.clone(), self.clock.clone())
    }

    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Control {
        let recent_tasks = recent_tasks::RecentTasks::default();
        Control {
            task_watches: fanout::TaskFanout::new(store.clone(), recent_tasks.clone()),
            recent_tasks,
            reported_tasks: Default::default(),
            task_cache: record_cache::RecordCache::new(TASKS_PREFIX),
            service_cache: record_cache::RecordCache::new(services::SERVICES_PREFIX),
            security: ec2::SecuritySource::new(store.clone()),
            signing_keys: iam::SigningKeys::new(store.clone()),
            store,
            clock,
            prices: cost::Prices::default(),
            quotas: Arc::new(quotas::Quotas::default()),
        }
    }

    pub(crate) fn now(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>, EcsError> {
        match self.store.get(key).await.map_err(store_err)? {
            None => Ok(None),
            Some(kv) => {
                let v = serde_json::from_slice(&kv.value)
                    .map_err(|e| EcsError::Server(format!("corrupt record {key}: {e}")))?;
                Ok(Some((v, kv.mod_revision)))
            }
        }
    }

    /// Read-modify-write of a JSON record, compare-and-swap on its revision, retried on
    /// conflict. `f` returns Ok(false) to leave the record alone; nothing is written unless it
    /// changed. Ok(None) if the key does not exist.
    pub async fn update_json<T>(
        &self,
        key: &str,
        f: impl FnMut(&mut T) -> Result<bool, EcsError>,
    ) -> Result<Option<T>, EcsError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + PartialEq,
    {
        self.update_json_from(key, None, f).await
    }

    /// `update_json` starting from `known` (the record and revision the caller listed) instead
    /// of a read: nothing is read when `f` changes nothing or the write's compare-and-swap
    /// finds `known` current. For a controller that passes again shortly: a change another
    /// writer made since `known` is judged on its next pass, and a write still checks the
    /// revision (a conflict reads the record and applies `f` again).
    pub async fn update_json_from<T>(
        &self,
        key: &str,
        mut known: Option<(T, i64)>,
        mut f: impl FnMut(&mut T) -> Result<bool, EcsError>,
    ) -> Result<Option<T>, EcsError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + PartialEq,
    {
        loop {
            let (mut rec, rev) = match known.take() {
                Some(k) => k,
                None => match self.get_json::<T>(key).await? {
                    Some(k) => k,
                    None => return Ok(None),
                },
            };
            let before = rec.clone();
            if !f(&mut rec)? || rec == before {
                return Ok(Some(rec));
            }
            match self
                .store
                .update(key, &serde_json::to_vec(&rec).expect("records serialise"), rev)
                .await
            {
                Ok(_) => return Ok(Some(rec)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    pub(crate) async fn list_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T, i64)>, EcsError> {
        let (kvs, _) = self.store.list(prefix).await.map_err(store_err)?;
        kvs.into_iter()
            .map(|kv| {
                let v = serde_json::from_slice(&kv.value)
                    .map_err(|e| EcsError::Server(format!("corrupt record {}: {e}", kv.key)))?;
                Ok((kv.key, v, kv.mod_revision))
            })
            .collect()
    }
}

/// Pagination tokens: the last key returned, opaque to clients.
pub(crate) fn encode_token(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_token(t: &str) -> Result<String, EcsError> {
    let bad = || EcsError::invalid("Invalid nextToken.");
    // Hex is ASCII: anything else would also make the two-byte slices below split a character.
    if t.len() % 2 != 0 || !t.is_ascii() {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16))
        .collect();
    String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())
}

/// maxResults as ECS bounds it.
pub(crate) fn page_size(max: Option<i64>, default: i64) -> Result<usize, EcsError> {
    match max {
        None => Ok(default as usize),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(_) => Err(EcsError::invalid("maxResults must be between 1 and 100.")),
    }
}

#[cfg(test)]
mod token_tests {
    use super::decode_token;

    #[test]
    fn a_token_that_is_not_hex_is_refused_not_a_panic() {
        assert_eq!(decode_token("6869").unwrap(), "hi");
        for bad in ["a\u{e9}b", "\u{e9}\u{e9}", "zz", "123"] {
            assert!(decode_token(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod update_tests {
    use crate::{Control, SystemClock};
    use std::sync::Arc;

    #[tokio::test]
    async fn an_update_from_a_listed_record_reads_only_on_a_conflict() {
        let counted = Arc::new(gantry_store::instrumented::Instrumented::new());
        let control = Control::new(counted.clone(), Arc::new(SystemClock));
        let rev = control.store.create("/r", b"1").await.unwrap();
        // Nothing to change: nothing read, nothing written.
        let same = control
            .update_json_from("/r", Some((1i64, rev)), |_: &mut i64| Ok(true))
            .await;
        assert_eq!((same.unwrap(), counted.gets()), (Some(1), 0));
        // Current: written without a read.
        let two = control.update_json_from("/r", Some((1i64, rev)), |n: &mut i64| {
            *n = 2;
            Ok(true)
        });
        assert_eq!((two.await.unwrap(), counted.gets()), (Some(2), 0));
        // Stale: the compare-and-swap refuses it; read, and applied to what is stored.
        let three = control.update_json_from("/r", Some((1i64, rev)), |n: &mut i64| {
            *n += 1;
            Ok(true)
        });
        assert_eq!((three.await.unwrap(), counted.gets()), (Some(3), 1));
        assert_eq!(control.store.get("/r").await.unwrap().unwrap().value, b"3");
        // Deleted meanwhile: none.
        control.store.delete("/r", None).await.unwrap();
        let gone = control.update_json_from("/r", Some((3i64, rev)), |n: &mut i64| {
            *n = 4;
            Ok(true)
        });
        assert_eq!(gone.await.unwrap(), None);
    }
}
