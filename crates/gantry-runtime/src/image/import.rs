//! Importing images from files: `docker save` archives and OCI image layouts (a directory or a
//! tar of one). Every file of the archive is streamed into the blob store, so it is hashed once
//! and nothing from the archive is ever written under a name the archive chose.

use super::*;
use std::collections::HashMap;

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Files of an archive, by their cleaned path: (digest, size) of regular files, and symlinks.
struct ArchiveFiles {
    files: HashMap<PathBuf, (Digest, u64)>,
    links: HashMap<PathBuf, PathBuf>,
}

impl ArchiveFiles {
    fn get(&self, name: &str) -> Option<&(Digest, u64)> {
        let mut p = unpack::clean_relative(Path::new(name))?;
        // Follow a few symlinks (newer docker save archives link duplicate layers).
        for _ in 0..8 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            let target = self.links.get(&p)?;
            let base = p.parent().unwrap_or(Path::new("")).join(target);
            p = unpack::clean_relative(&base)?;
        }
        None
    }
}

impl ImageStore {
    /// Imports every image in a `docker save` archive or an OCI layout (directory or tar).
    /// `name` names an image whose archive carries no usable name. Returns the images stored.
    pub fn load(&self, path: &Path, name: Option<&str>) -> Result<Vec<ImageRecord>, ImageError> {
        let files = if path.is_dir() {
            self.read_layout_dir(path)?
        } else {
            self.read_archive(path)?
        };
        if let Some((d, _)) = files.get("manifest.json") {
            return self.load_docker_save(&files, d, name);
        }
        if let Some((d, _)) = files.get("index.json") {
            return self.load_oci_layout(&files, d, name);
        }
        Err(ImageError::Malformed {
            what: path.display().to_string(),
            reason: "neither a docker save archive (manifest.json) nor an OCI image layout (index.json)".into(),
        })
    }

    fn read_archive(&self, path: &Path) -> Result<ArchiveFiles, ImageError> {
        let f = File::open(path).map_err(io_ctx(format!("opening {}", path.display())))?;
        let mut archive =
            tar::Archive::new(unpack::decompressed(io::BufReader::new(f)).map_err(io_ctx("reading archive"))?);
        let mut out = ArchiveFiles {
            files: HashMap::new(),
            links: HashMap::new(),
        };
        for entry in archive.entries().map_err(io_ctx("reading archive"))? {
            let mut entry = entry.map_err(io_ctx("reading archive"))?;
            let raw = entry.path().map_err(io_ctx("reading archive"))?.into_owned();
            let Some(rel) = unpack::clean_relative(&raw) else {
                return Err(ImageError::Malformed {
                    what: path.display().to_string(),
                    reason: format!("entry {raw:?} escapes the archive"),
                });
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let stored = self.put_blob(&mut entry, None, None)?;
                    out.files.insert(rel, stored);
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(t) = entry.link_name().map_err(io_ctx("reading archive"))? {
                        let t = t.into_owned();
                        // Hardlink targets are archive-relative, symlinks relative to their dir.
                        let t = if entry.header().entry_type() == tar::EntryType::Link {
                            let depth = rel.components().count().saturating_sub(1);
                            let mut up = PathBuf::new();
                            for _ in 0..depth {
                                up.push("..");
                            }
                            up.join(t)
                        } else {
                            t
                        };
                        out.links.insert(rel, t);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn read_layout_dir(&self, dir: &Path) -> Result<ArchiveFiles, ImageError> {
        let mut out = ArchiveFiles {
            files: HashMap::new(),
            links: HashMap::new(),
        };
        for name in ["index.json", "oci-layout"] {
            let p = dir.join(name);
            if p.is_file() {
                let f = File::open(&p).map_err(io_ctx(format!("opening {}", p.display())))?;
                out.files
                    .insert(PathBuf::from(name), self.put_blob(f, None, Some(MAX_MANIFEST_BYTES))?);
            }
        }
        let blobs = dir.join("blobs/sha256");
        if let Ok(rd) = fs::read_dir(&blobs) {
            for e in rd {
                let e = e.map_err(io_ctx("listing layout blobs"))?;
                let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else {
                    continue;
                };
                let f = File::open(e.path()).map_err(io_ctx(format!("opening {}", e.path().display())))?;
                // Blobs are verified against the name the layout gives them.
                let stored = self.put_blob(f, Some(&d), None)?;
                out.files.insert(PathBuf::from("blobs/sha256").join(d.hex()), stored);
            }
        }
        Ok(out)
    }

    fn load_docker_save(
        &self,
        files: &ArchiveFiles,
        manifest_json: &Digest,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&self.read_blob(manifest_json, MAX_MANIFEST_BYTES)?)
            .map_err(|e| ImageError::Malformed {
                what: "docker save manifest.json".into(),
                reason: e.to_string(),
            })?;
        let missing = |p: &str| ImageError::Malformed {
            what: "docker save archive".into(),
            reason: format!("{p} is listed in manifest.json but not in the archive"),
        };
        let mut out = Vec::new();
        for entry in entries {
            let (config, config_size) = files.get(&entry.config).ok_or_else(|| missing(&entry.config))?.clone();
            let mut layers = Vec::new();
            for l in &entry.layers {
                let (d, size) = files.get(l).ok_or_else(|| missing(l))?.clone();
                let head = self.read_blob_head(&d)?;
                let media_type = if head.starts_with(&[0x1f, 0x8b]) {
                    MEDIA_OCI_LAYER_GZIP
                } else {
                    MEDIA_OCI_LAYER
                };
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest: d,
                    size,
                    platform: None,
                    annotations: None,
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: MEDIA_OCI_CONFIG.into(),
                    digest: config.clone(),
                    size: config_size,
                    platform: None,
                    annotations: None,
                },
                layers,
            };
            let mdigest = self.put_blob_bytes(&serde_json::to_vec(&manifest).expect("manifest serialises"))?;
            let mut names: Vec<String> = Vec::new();
            for t in entry.repo_tags.unwrap_or_default() {
                names.push(Reference::parse(&t)?.to_string());
            }
            if let Some(n) = name {
                names = vec![Reference::parse(n)?.to_string()];
            }
            if names.is_empty() {
                names.push(config.to_string());
            }
            for n in names {
                out.push(self.commit_image(&n, &mdigest, &manifest)?);
            }
        }
        Ok(out)
    }

    fn read_blob_head(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let mut buf = vec![0u8; 4];
        let mut f = File::open(self.blob_path(d)).map_err(io_ctx(format!("reading blob {d}")))?;
        let n = f.read(&mut buf).map_err(io_ctx(format!("reading blob {d}")))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn load_oci_layout(
        &self,
        files: &ArchiveFiles,
        index_json: &Digest,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let index: Index = serde_json::from_slice(&self.read_blob(index_json, MAX_MANIFEST_BYTES)?).map_err(|e| {
            ImageError::Malformed {
                what: "OCI layout index.json".into(),
                reason: e.to_string(),
            }
        })?;
        let mut out = Vec::new();
        for desc in &index.manifests {
            // Blobs must be in the layout under their own digest.
            let blob = |d: &Digest| -> Result<(), ImageError> {
                match files.get(&format!("blobs/sha256/{}", d.hex())) {
                    Some((actual, _)) if actual == d => Ok(()),
                    Some((actual, _)) => Err(ImageError::DigestMismatch {
                        digest: d.clone(),
                        actual: actual.clone(),
                    }),
                    None => Err(ImageError::Malformed {
                        what: "OCI layout".into(),
                        reason: format!("blob {d} is missing"),
                    }),
                }
            };
            blob(&desc.digest)?;
            let mut mdigest = desc.digest.clone();
            let mut bytes = self.read_blob(&mdigest, MAX_MANIFEST_BYTES)?;
            if desc.media_type == MEDIA_OCI_INDEX || desc.media_type == MEDIA_DOCKER_LIST {
                let nested: Index = serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
                    what: format!("index {mdigest}"),
                    reason: e.to_string(),
                })?;
                let chosen = nested.select_linux_amd64().ok_or_else(|| ImageError::Malformed {
                    what: format!("index {mdigest}"),
                    reason: "no linux/amd64 image".into(),
                })?;
                mdigest = chosen.digest.clone();
                blob(&mdigest)?;
                bytes = self.read_blob(&mdigest, MAX_MANIFEST_BYTES)?;
            }
            let manifest = parse_manifest(&bytes, &format!("manifest {mdigest}"))?;
            blob(&manifest.config.digest)?;
            for l in &manifest.layers {
                blob(&l.digest)?;
            }
            let ref_name = desc
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .cloned();
            let full = match (name, ref_name) {
                (Some(n), _) => Reference::parse(n)?.to_string(),
                (None, Some(r))
                    if r.contains('/')
                        || r.contains(':')
                        || !r.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
                {
                    Reference::parse(&r)?.to_string()
                }
                (None, Some(tag)) => {
                    return Err(ImageError::Malformed {
                        what: "OCI layout".into(),
                        reason: format!("image is tagged only {tag:?}; give it a name (--name)"),
                    })
                }
                (None, None) => mdigest.to_string(),
            };
            out.push(self.commit_image(&full, &mdigest, &manifest)?);
        }
        Ok(out)
    }
}
