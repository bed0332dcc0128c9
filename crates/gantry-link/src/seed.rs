//! Re-seeding a server's copy of the logs or metrics (see `gantry_control::feed`) from another
//! server's. Every server announces the URL of its agent listener under `/servers/<replica>`;
//! a copy with a gap asks the others in turn for `GET /v1/seed/<copy>`, presenting its own
//! server certificate (mutual TLS under the cluster CA, as agents do), and writes the snapshot
//! to a file the feed then puts in place of its copy.

use crate::client::{Identity, RemoteLink};
use anyhow::Result;
use futures_util::StreamExt;
use gantry_control::feed::Seeder;
use gantry_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where servers announce themselves, by replica id.
pub const SERVERS: &str = "/servers/";

#[derive(Debug, Serialize, Deserialize)]
struct ServerRecord {
    /// The URL its agent listener is reached by.
    link: String,
}

/// Records where this server (`replica`) is reached, for the others to re-seed from.
pub async fn announce(store: &dyn Store, replica: &str, link: &str) -> Result<(), StoreError> {
    let key = format!("{SERVERS}{replica}");
    let value = serde_json::to_vec(&ServerRecord { link: link.to_string() }).expect("serialises");
    match store.get(&key).await? {
        Some(kv) if kv.value == value => Ok(()),
        Some(kv) => store.update(&key, &value, kv.mod_revision).await.map(|_| ()),
        None => store.create(&key, &value).await.map(|_| ()),
    }
}

/// Fetches copies from the other servers, as this server.
pub struct PeerSeeder {
    store: Arc<dyn Store>,
    replica: String,
    client: reqwest::Client,
}

impl PeerSeeder {
    /// `chain_pem` and `key_pem`: this server's certificate (leaf then CA) and key.
    pub fn new(store: Arc<dyn Store>, replica: &str, ca_pem: &str, chain_pem: &str, key_pem: &str) -> Result<Self> {
        let id = Identity {
            ca_pem: ca_pem.to_string(),
            cert_pem: chain_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        Ok(PeerSeeder {
            store,
            replica: replica.to_string(),
            client: RemoteLink::client_for(&id)?,
        })
    }

    /// Writes one server's snapshot to `dest`.
    async fn fetch_from(&self, link: &str, copy: &str, dest: &Path) -> Result<(), String> {
        let r = self
            .client
            .get(format!("{link}/v1/seed/{copy}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            let status = r.status();
            return Err(format!("{status}: {}", r.text().await.unwrap_or_default()));
        }
        let mut out = tokio::fs::File::create(dest).await.map_err(|e| e.to_string())?;
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.map_err(|e| e.to_string())?)
                .await
                .map_err(|e| e.to_string())?;
        }
        out.sync_all().await.map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Seeder for PeerSeeder {
    async fn fetch(&self, copy: &str, dest: &Path) -> Result<String, String> {
        let (servers, _) = self.store.list(SERVERS).await.map_err(|e| e.to_string())?;
        let mut refusals = Vec::new();
        for kv in servers
            .iter()
            .filter(|kv| kv.key != format!("{SERVERS}{}", self.replica))
        {
            let Ok(server) = serde_json::from_slice::<ServerRecord>(&kv.value) else {
                continue;
            };
            match self.fetch_from(&server.link, copy, dest).await {
                Ok(()) => return Ok(server.link),
                Err(e) => refusals.push(format!("{}: {e}", server.link)),
            }
        }
        match refusals.is_empty() {
            true => Err("no other server has announced itself".into()),
            false => Err(refusals.join("; ")),
        }
    }
}

/// A response body streaming an open file (a snapshot, already unlinked).
pub fn file_body(file: std::fs::File) -> axum::body::Body {
    let chunks = futures_util::stream::unfold(Some(tokio::fs::File::from_std(file)), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(f)))
            }
            // Ends the body after the error (the client sees a cut transfer).
            Err(e) => Some((Err(e), None)),
        }
    });
    axum::body::Body::from_stream(chunks)
}
