//! etcd backend (the cluster's store, as Kubernetes uses it). Revisions are etcd's own; every
//! conditional write is one transaction (compare mod_revision / version, then put or delete,
//! else read the key to say why); watches are etcd watches from a revision. All keys live under
//! a namespace prefix so several Gantry clusters (or test runs) can share one etcd.

use crate::{Event, EventKind, KeyValue, Result, Store, StoreError, Watch};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::time::Duration;
use tokio::sync::mpsc;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdStore {
    pub(crate) client: Client,
    namespace: String,
}

fn backend(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

/// The request never reached etcd (the client picked a member that is down): repeating it,
/// whatever it is, cannot apply anything twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    e.to_string().contains("tcp connect error")
}

/// Runs `op` again, with a short backoff, while it could not reach etcd at all: with one
/// member down, the balanced client keeps picking it for a while. About 3 s at most.
pub(crate) async fn retrying<T, F, Fut>(client: &Client, mut op: F) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut delay = std::time::Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match op(client.clone()).await {
            Err(e) if never_sent(&e) && attempt < 10 => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_millis(500));
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string().contains("required revision has been compacted")
}

/// An etcd key-value as the store's, its key without the namespace.
fn to_kv(namespace: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = String::from_utf8_lossy(kv.key());
    let key = key
        .strip_prefix(namespace)
        .ok_or_else(|| StoreError::Backend(format!("etcd returned a key outside the namespace: {key}")))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

impl EtcdStore {
    /// Connects to the cluster's members (`host:port` or URLs); keys are kept under `namespace`.
    pub async fn connect(endpoints: &[String], namespace: &str) -> Result<EtcdStore> {
        // Bounded requests: with every member gone a call fails within REQUEST_TIMEOUT (the
        // API answers a server error) instead of waiting for a member to come back.
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(options)).await.map_err(backend)?;
        Ok(EtcdStore {
            client,
            namespace: namespace.to_string(),
        })
    }

    pub(crate) fn key(&self, k: &str) -> String {
        format!("{}{k}", self.namespace)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        to_kv(&self.namespace, kv)
    }

    /// Runs a conditional write; on failure reads the key (the `or_else` branch) and says why.
    async fn conditional(&self, key: &str, when: Vec<Compare>, op: TxnOp, expected: Option<i64>) -> Result<i64> {
        let k = self.key(key);
        let txn = Txn::new()
            .when(when)
            .and_then(vec![op])
            .or_else(vec![TxnOp::get(k, None)]);
        let resp = retrying(&self.client, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(backend)?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            return Ok(rev);
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        Err(match (current, expected) {
            (None, _) => StoreError::NotFound { key: key.into() },
            (Some(actual), Some(expected)) => StoreError::Conflict {
                key: key.into(),
                expected,
                actual,
            },
            (Some(_), None) => StoreError::AlreadyExists { key: key.into() },
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let k = self.key(key);
        let resp = retrying(&self.client, |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })
        .await
        .map_err(backend)?;
        resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let k = self.key(prefix);
        let resp = retrying(&self.client, |mut c| {
            let k = k.clone();
            async move { c.get(k, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .map_err(backend)?;
        let kvs = resp.kvs().iter().map(|kv| self.to_kv(kv)).collect::<Result<Vec<_>>>()?;
        Ok((kvs, resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    async fn list_keys(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let k = self.key(prefix);
        let resp = retrying(&self.client, |mut c| {
            let k = k.clone();
            async move { c.get(k, Some(GetOptions::new().with_prefix().with_keys_only())).await }
        })
        .await
        .map_err(backend)?;
        let kvs = resp.kvs().iter().map(|kv| self.to_kv(kv)).collect::<Result<Vec<_>>>()?;
        Ok((kvs, resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<i64> {
        let k = self.key(key);
        let when = vec![Compare::create_revision(k.clone(), CompareOp::Equal, 0)];
        self.conditional(key, when, TxnOp::put(k, value.to_vec(), None), None)
            .await
    }

    async fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64> {
        let k = self.key(key);
        let when = vec![
            Compare::version(k.clone(), CompareOp::Greater, 0),
            Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
        ];
        self.conditional(key, when, TxnOp::put(k, value.to_vec(), None), Some(expected))
            .await
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<i64> {
        let k = self.key(key);
        let mut when = vec![Compare::version(k.clone(), CompareOp::Greater, 0)];
        if let Some(e) = expected {
            when.push(Compare::mod_revision(k.clone(), CompareOp::Equal, e));
        }
        self.conditional(key, when, TxnOp::delete(k, None), expected).await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        let mut client = self.client.clone();
        // A watch from a compacted revision fails now, as the trait says, not later.
        if after > 0 {
            let probe = GetOptions::new().with_prefix().with_revision(after).with_count_only();
            if let Err(e) = client.get(self.key(prefix), Some(probe)).await {
                if is_compacted(&e) {
                    return Err(StoreError::Compacted {
                        requested: after,
                        compacted: after + 1,
                    });
                }
                return Err(backend(e));
            }
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(after + 1);
        let mut stream = client.watch(self.key(prefix), Some(options)).await.map_err(backend)?;
        let (tx, rx) = mpsc::channel(1024);
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let mut last = after;
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    // The watcher is gone: dropping the stream cancels the watch, which on a
                    // quiet prefix would otherwise stay open on the server for good.
                    _ = tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(backend(e))).await;
                        return;
                    }
                };
                if resp.canceled() {
                    let err = if resp.compact_revision() > 0 {
                        StoreError::Compacted {
                            requested: last,
                            compacted: resp.compact_revision(),
                        }
                    } else {
                        StoreError::Backend(format!("etcd watch canceled: {}", resp.cancel_reason()))
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    let kv = match to_kv(&namespace, kv) {
                        Ok(kv) => kv,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    };
                    let kind = match e.event_type() {
                        EventType::Put => EventKind::Put,
                        EventType::Delete => EventKind::Delete,
                    };
                    let event = Event { kind, kv };
                    last = event.kv.mod_revision;
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher is gone; dropping the stream cancels the watch
                    }
                }
            }
        });
        Ok(Watch { events: rx })
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match retrying(&self.client, |mut c| async move { c.compact(revision, None).await }).await {
            Ok(_) => Ok(()),
            // Compacting to where it already is, or before, is done already.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn revision(&self) -> Result<i64> {
        let k = self.key("");
        let resp = retrying(&self.client, |mut c| {
            let k = k.clone();
            async move { c.get(k, Some(GetOptions::new().with_count_only())).await }
        })
        .await
        .map_err(backend)?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}
