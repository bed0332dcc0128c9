//! The messages of the agent protocol (JSON bodies; the watch is JSON lines).

use gantry_agent::link::LogTarget;
use gantry_control::TaskRecord;
use gantry_store::{Event, EventKind, KeyValue};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The watch sends an empty line this often; an agent that hears nothing for three of these
/// treats the connection as dead and watches again.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub node: String,
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize)]
pub struct JoinResponse {
    pub cert_pem: String,
    pub ca_pem: String,
}

/// A node's renewal: a CSR for a new key; the certificate names the node that asked.
#[derive(Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: u64,
}

#[derive(Serialize, Deserialize)]
pub struct KeyQuery {
    pub key: String,
}

#[derive(Serialize, Deserialize)]
pub struct PutTask {
    pub key: String,
    pub record: TaskRecord,
    pub rev: i64,
    pub epoch: u64,
}

#[derive(Serialize, Deserialize)]
pub struct EnsureStream {
    pub target: LogTarget,
    pub create_group: bool,
}

#[derive(Serialize, Deserialize)]
pub struct PutEvents {
    pub target: LogTarget,
    pub events: Vec<(i64, String)>,
}

/// One watch event.
#[derive(Serialize, Deserialize)]
pub struct WatchLine {
    pub delete: bool,
    pub key: String,
    /// The record as stored (puts).
    #[serde(default)]
    pub value: String,
    pub rev: i64,
}

impl WatchLine {
    pub fn from_event(e: &Event) -> Option<WatchLine> {
        Some(WatchLine {
            delete: e.kind == EventKind::Delete,
            key: e.kv.key.clone(),
            value: String::from_utf8(e.kv.value.clone()).ok()?,
            rev: e.kv.mod_revision,
        })
    }

    pub fn into_event(self) -> Event {
        Event {
            kind: if self.delete { EventKind::Delete } else { EventKind::Put },
            kv: KeyValue {
                key: self.key,
                value: self.value.into_bytes(),
                create_revision: 0,
                mod_revision: self.rev,
                version: 0,
            },
        }
    }
}

/// `GET /v1/dns?after=REV`: the Cloud Map records (key, JSON value) and their revision.
#[derive(Serialize, Deserialize)]
pub struct DnsRecords {
    pub records: Vec<(String, String)>,
    pub revision: i64,
}

#[derive(Serialize, Deserialize)]
pub struct After {
    pub after: i64,
}
