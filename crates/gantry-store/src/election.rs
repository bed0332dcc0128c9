//! Leader election on etcd: a role (say, "controllers") is held by whoever created its key
//! under a lease it keeps alive. When the holder dies the lease expires (after `ttl`), etcd
//! deletes the key, and the next campaigner gets the role. A holder learns it lost the role
//! (its lease expired or was revoked) through `Leader::lost`, and must stop acting on it.

use crate::{EtcdStore, Result, StoreError};
use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use std::time::Duration;
use tokio::sync::watch;

/// The role, held.
pub struct Leader {
    lease: i64,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
    store_client: etcd_client::Client,
}

impl Leader {
    /// Becomes true when the role is lost (the lease could not be kept alive).
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Gives the role up at once (the next campaigner does not wait for the lease to expire).
    pub async fn resign(mut self) -> Result<()> {
        self.keepalive.abort();
        self.store_client
            .lease_revoke(self.lease)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(format!("etcd: {e}")))
    }
}

impl Drop for Leader {
    /// Dropped without resigning is like dying: the lease runs out by itself.
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

fn backend(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Waits until this process (`id`) holds `role`, then keeps it for as long as it can
    /// renew a lease of `ttl` (the longest a dead leader keeps the role).
    pub async fn campaign(&self, role: &str, id: &str, ttl: Duration) -> Result<Leader> {
        let key = self.key(&format!("/election/{role}"));
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let mut client = self.client.clone();
        loop {
            let lease = crate::etcd::retrying(&client, |mut c| async move { c.lease_grant(ttl_secs, None).await })
                .await
                .map_err(backend)?
                .id();
            let txn = Txn::new()
                .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    id.as_bytes().to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let resp = crate::etcd::retrying(&client, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(backend)?;
            if resp.succeeded() {
                return self.hold(lease, ttl_secs).await;
            }
            let _ = client.lease_revoke(lease).await;
            // Someone holds it: wait for their key to go (resigned, or their lease expired).
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            let mut w = client
                .watch(key.clone(), Some(WatchOptions::new().with_start_revision(rev + 1)))
                .await
                .map_err(backend)?;
            'wait: loop {
                match tokio::time::timeout(Duration::from_secs(ttl_secs as u64), w.message()).await {
                    // A quiet holder: re-check now and then rather than trust the stream alone.
                    Err(_) => break 'wait,
                    Ok(Ok(Some(m))) => {
                        if m.canceled() || m.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            break 'wait;
                        }
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => break 'wait,
                }
            }
        }
    }

    /// Keeps the lease alive at a third of its ttl; `lost` flips when that fails.
    async fn hold(&self, lease: i64, ttl_secs: i64) -> Result<Leader> {
        let mut client = self.client.clone();
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.map_err(backend)?;
        let (tx, rx) = watch::channel(false);
        let keepalive = tokio::spawn(async move {
            let every = Duration::from_millis((ttl_secs as u64 * 1000 / 3).max(200));
            loop {
                let alive = keeper.keep_alive().await.is_ok()
                    && matches!(
                        tokio::time::timeout(every, responses.message()).await,
                        Ok(Ok(Some(r))) if r.ttl() > 0
                    );
                if !alive {
                    let _ = tx.send(true);
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Ok(Leader {
            lease,
            lost: rx,
            keepalive,
            store_client: self.client.clone(),
        })
    }
}
