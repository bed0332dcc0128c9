//! The content-addressed image store shared by all tasks on a node.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: manifests, configs and compressed layers, verified on the way in.
//! - `layers/<hex>/`: a layer blob unpacked for use as an overlayfs lower directory.
//! - `refs.json`: image name -> manifest, config and layer digests.
//! - `tmp/`: partial downloads and unpacks; renamed into place only once verified.
//!
//! Writers take `flock` locks (per blob, per layer, and one for refs.json), so concurrent pulls
//! in one process or several never fetch or unpack the same thing twice.

mod import;
pub mod reference;
pub mod registry;
pub mod unpack;

use crate::digest::{Digest, HashingWriter};
use crate::sys;
pub use reference::Reference;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
pub use unpack::UnpackLimits;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Manifests and configs are small; refuse anything bigger before parsing it.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error("image {name} not found in the local store")]
    NotFound { name: String },
    #[error("blob {digest} failed verification: content hashes to {actual}")]
    DigestMismatch { digest: Digest, actual: Digest },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// One named image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    pub manifest: Digest,
    pub config: Digest,
    /// Layer blobs, base layer first.
    pub layers: Vec<Digest>,
    /// Compressed size of config and layers.
    pub size: u64,
    pub created_unix: i64,
}

/// The parts of the OCI image config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
    pub diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
struct RawImageConfig {
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        let raw: RawImageConfig = serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
            what: "image config".into(),
            reason: e.to_string(),
        })?;
        let c = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            diff_ids: raw.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
        })
    }
}

/// A descriptor inside a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// An image manifest (OCI or Docker schema 2; they share this shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// The linux/amd64 entry, as the node runs amd64.
    pub fn select_linux_amd64(&self) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
    }
}

pub(crate) fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest, ImageError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    if m.schema_version != 2 {
        return Err(ImageError::Malformed {
            what: what.to_string(),
            reason: format!("schemaVersion {} is not supported", m.schema_version),
        });
    }
    Ok(m)
}

#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    pub root: PathBuf,
    pub limits: UnpackLimits,
    pub registry: registry::RegistryConfig,
}

pub struct ImageStore {
    root: PathBuf,
    limits: UnpackLimits,
    registry: registry::RegistryConfig,
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

/// Where unpacked layers live: `layers/`, or with user namespaces `layers-userns-BASE/`,
/// their owners moved into the range (blobs are shared).
fn layers_dir(limits: &UnpackLimits) -> String {
    match limits.id_base {
        None => "layers".into(),
        Some(base) => format!("layers-userns-{base}"),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ImageStore {
    pub fn open(cfg: ImageStoreConfig) -> Result<ImageStore, ImageError> {
        let layers = layers_dir(&cfg.limits);
        for d in ["blobs/sha256", layers.as_str(), "tmp", "locks"] {
            fs::create_dir_all(cfg.root.join(d)).map_err(io_ctx(format!("creating {}", cfg.root.join(d).display())))?;
        }
        Ok(ImageStore {
            root: cfg.root,
            limits: cfg.limits,
            registry: cfg.registry,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.root.join(layers_dir(&self.limits)).join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(crate::random_hex(16))
    }

    /// Holds an exclusive lock named `name` until the returned file is dropped.
    pub(crate) fn lock(&self, name: &str) -> Result<File, ImageError> {
        let p = self.root.join("locks").join(name);
        let f = File::create(&p).map_err(io_ctx(format!("opening lock {}", p.display())))?;
        sys::flock_exclusive(&f).map_err(io_ctx(format!("locking {}", p.display())))?;
        Ok(f)
    }

    /// Streams `reader` into the blob store. With `expected`, the content must hash to it
    /// (otherwise nothing is stored); `max` bounds the size.
    pub fn put_blob(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        max: Option<u64>,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                let size = fs::metadata(self.blob_path(d)).map(|m| m.len()).unwrap_or(0);
                return Ok((d.clone(), size));
            }
        }
        let tmp = self.tmp_path();
        let file = File::create(&tmp).map_err(io_ctx(format!("creating {}", tmp.display())))?;
        let mut w = HashingWriter::new(io::BufWriter::new(file));
        let limit = max.unwrap_or(u64::MAX);
        let copied = io::copy(&mut reader.take(limit.saturating_add(1)), &mut w);
        let cleanup = |e: ImageError| {
            let _ = fs::remove_file(&tmp);
            e
        };
        copied.map_err(io_ctx("writing blob")).map_err(cleanup)?;
        let (digest, size, buf) = w.finish();
        buf.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(io_ctx("flushing blob"))
            .map_err(cleanup)?;
        if size > limit {
            return Err(cleanup(ImageError::TooLarge {
                what: format!("blob {}", expected.map(|d| d.to_string()).unwrap_or_default()),
                limit,
            }));
        }
        if let Some(e) = expected {
            if *e != digest {
                return Err(cleanup(ImageError::DigestMismatch {
                    digest: e.clone(),
                    actual: digest,
                }));
            }
        }
        fs::rename(&tmp, self.blob_path(&digest))
            .map_err(io_ctx("storing blob"))
            .map_err(cleanup)?;
        Ok((digest, size))
    }

    pub fn put_blob_bytes(&self, data: &[u8]) -> Result<Digest, ImageError> {
        Ok(self.put_blob(data, None, None)?.0)
    }

    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(io_ctx(format!("reading blob {d}")))?;
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io_ctx(format!("reading blob {d}")))?;
        if buf.len() as u64 > max {
            return Err(ImageError::TooLarge {
                what: format!("blob {d}"),
                limit: max,
            });
        }
        Ok(buf)
    }

    /// Unpacks a layer blob once; later callers reuse the directory. `diff_id`, when the image
    /// config names one, is checked against the uncompressed stream.
    pub fn ensure_layer(&self, blob: &Digest, diff_id: Option<&Digest>) -> Result<PathBuf, ImageError> {
        let dest = self.layer_path(blob);
        if dest.is_dir() {
            return Ok(dest);
        }
        let _lock = self.lock(&format!("layer-{}", blob.hex()))?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.tmp_path();
        fs::create_dir(&tmp).map_err(io_ctx("creating layer dir"))?;
        let result = (|| {
            let f = File::open(self.blob_path(blob)).map_err(io_ctx(format!("opening layer blob {blob}")))?;
            let actual = unpack::unpack_layer(io::BufReader::new(f), &tmp, blob.as_str(), self.limits)?;
            if let Some(expected) = diff_id {
                if *expected != actual {
                    return Err(unpack::UnpackError::DiffIdMismatch {
                        layer: blob.to_string(),
                        expected: expected.clone(),
                        actual,
                    }
                    .into());
                }
            }
            fs::rename(&tmp, &dest).map_err(io_ctx("storing layer"))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result.map(|_| dest)
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    fn read_refs(&self) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
        match fs::read(self.refs_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Malformed {
                what: "refs.json".into(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_ctx("reading refs.json")(e)),
        }
    }

    fn update_refs(&self, f: impl FnOnce(&mut BTreeMap<String, ImageRecord>)) -> Result<(), ImageError> {
        let _lock = self.lock("refs")?;
        let mut refs = self.read_refs()?;
        f(&mut refs);
        let tmp = self.tmp_path();
        let data = serde_json::to_vec_pretty(&refs).expect("records serialise");
        let mut file = File::create(&tmp).map_err(io_ctx("writing refs.json"))?;
        file.write_all(&data)
            .and_then(|_| file.sync_all())
            .map_err(io_ctx("writing refs.json"))?;
        fs::rename(&tmp, self.refs_path()).map_err(io_ctx("writing refs.json"))
    }

    /// Records `name` for an image whose manifest, config and layer blobs are all stored, and
    /// unpacks its layers so a container can start from it.
    pub(crate) fn commit_image(
        &self,
        name: &str,
        manifest_digest: &Digest,
        manifest: &Manifest,
    ) -> Result<ImageRecord, ImageError> {
        let cfg_bytes = self.read_blob(&manifest.config.digest, MAX_MANIFEST_BYTES)?;
        let cfg = ImageConfig::parse(&cfg_bytes)?;
        if !cfg.diff_ids.is_empty() && cfg.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Malformed {
                what: format!("image {name}"),
                reason: format!(
                    "config lists {} diff_ids for {} layers",
                    cfg.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        for (i, l) in manifest.layers.iter().enumerate() {
            self.ensure_layer(&l.digest, cfg.diff_ids.get(i))?;
        }
        let record = ImageRecord {
            name: name.to_string(),
            manifest: manifest_digest.clone(),
            config: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            created_unix: now_unix(),
        };
        let r = record.clone();
        self.update_refs(move |refs| {
            refs.insert(r.name.clone(), r);
        })?;
        Ok(record)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.read_refs()?.into_values().collect())
    }

    /// Finds an image by name (normalised like Docker) or by manifest digest.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let refs = self.read_refs()?;
        if let Some(r) = refs.get(name) {
            return Ok(r.clone());
        }
        if let Ok(reference) = Reference::parse(name) {
            if let Some(r) = refs.get(&reference.to_string()) {
                return Ok(r.clone());
            }
            if let Some(d) = &reference.digest {
                if let Some(r) = refs.values().find(|r| &r.manifest == d) {
                    return Ok(r.clone());
                }
            }
        }
        Err(ImageError::NotFound { name: name.to_string() })
    }

    pub fn config(&self, record: &ImageRecord) -> Result<ImageConfig, ImageError> {
        ImageConfig::parse(&self.read_blob(&record.config, MAX_MANIFEST_BYTES)?)
    }

    /// The image from the store, pulling it first if it is not there.
    pub fn resolve(&self, name: &str, progress: bool) -> Result<ImageRecord, ImageError> {
        self.resolve_as(name, progress, None)
    }

    /// `resolve`, pulling with these credentials when the image is not in the store.
    pub fn resolve_as(
        &self,
        name: &str,
        progress: bool,
        creds: Option<registry::Credentials>,
    ) -> Result<ImageRecord, ImageError> {
        match self.get(name) {
            Ok(r) => Ok(r),
            Err(ImageError::NotFound { .. }) => self.pull_as(name, progress, creds),
            Err(e) => Err(e),
        }
    }

    pub fn remove(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let rec = self.get(name)?;
        let key = rec.name.clone();
        self.update_refs(move |refs| {
            refs.remove(&key);
        })?;
        Ok(rec)
    }

    /// Deletes blobs and unpacked layers that no image references and no container uses
    /// (`in_use`: layer digests held by live containers).
    pub fn gc(&self, in_use: &HashSet<Digest>) -> Result<GcReport, ImageError> {
        let _lock = self.lock("refs")?;
        let refs = self.read_refs()?;
        let mut keep: HashSet<Digest> = in_use.clone();
        for r in refs.values() {
            keep.insert(r.manifest.clone());
            keep.insert(r.config.clone());
            keep.extend(r.layers.iter().cloned());
        }
        let mut report = GcReport::default();
        let layers = layers_dir(&self.limits);
        for (dir, is_layer) in [("blobs/sha256", false), (layers.as_str(), true)] {
            let dir = self.root.join(dir);
            for e in fs::read_dir(&dir).map_err(io_ctx(format!("listing {}", dir.display())))? {
                let e = e.map_err(io_ctx("listing store"))?;
                let name = e.file_name().to_string_lossy().to_string();
                let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                    continue;
                };
                if keep.contains(&d) {
                    continue;
                }
                if is_layer {
                    report.bytes_freed += dir_size(&e.path());
                    fs::remove_dir_all(e.path()).map_err(io_ctx(format!("removing layer {d}")))?;
                    report.layers_removed += 1;
                } else {
                    report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(e.path()).map_err(io_ctx(format!("removing blob {d}")))?;
                    report.blobs_removed += 1;
                }
            }
        }
        // Partial downloads of crashed pulls; recent ones may belong to a pull in progress.
        if let Ok(rd) = fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > std::time::Duration::from_secs(3600))
                    .unwrap_or(true);
                if stale {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        Ok(report)
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len();
                    }
                }
            }
        }
    }
    total
}
