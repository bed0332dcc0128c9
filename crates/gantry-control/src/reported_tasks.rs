//! The task records behind each node's usage reports. A node reports its running tasks every
//! few seconds; what publishing needs of a record (account, cluster, service, family, size)
//! never changes over a task's life, nor does the node it is placed on, so a record is read
//! when a task is first reported, not on every report (on etcd a round trip per task each
//! time). A node's set is replaced by each report: a task no longer reported is forgotten.

use crate::TaskRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type ByKey = HashMap<String, TaskRecord>;

#[derive(Clone, Default)]
pub struct ReportedTasks {
    by_node: Arc<Mutex<HashMap<String, ByKey>>>,
}

impl ReportedTasks {
    /// The records held from `node`'s last report (taken: `keep` puts back what is still
    /// reported).
    pub fn take(&self, node: &str) -> ByKey {
        let mut g = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(node).unwrap_or_default()
    }

    /// The records of `node`'s latest report.
    pub fn keep(&self, node: &str, records: ByKey) {
        let mut g = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(node.to_string(), records);
    }
}
