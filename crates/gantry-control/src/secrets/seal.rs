//! Secret values at rest: sealed with AES-256-GCM under a key kept outside the store (a file
//! the operator provides, or Gantry creates with mode 0600 on first start). The record holds
//! only the nonce and ciphertext; the associated data binds each ciphertext to its secret and
//! version, so a sealed value copied into another record does not open.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

pub const KEY_LEN: usize = 32;

/// A sealed value as stored: base64 nonce and ciphertext (with its tag).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

/// The key secrets are sealed with.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secrets key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("a sealed secret value does not open with this key (wrong key, or the record was altered)")]
    Open,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Sealer {
    pub fn from_key(bytes: &[u8; KEY_LEN]) -> Sealer {
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is an AES-256 key");
        Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// Reads the key from `path`, creating it (32 random bytes, mode 0600) when absent. A file
    /// of another length, or readable by others, is refused.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let err = |message: String| SealError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "mode {:o} lets others read it; chmod 600 it",
                        mode & 0o777
                    )));
                }
                let key: [u8; KEY_LEN] = bytes
                    .try_into()
                    .map_err(|b: Vec<u8>| err(format!("{} bytes; a key is {KEY_LEN} random bytes", b.len())))?;
                Ok(Sealer::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| err("no randomness".into()))?;
                // Written whole under another name, then linked into place: two servers
                // starting together never read a half-written key, and the second one keeps
                // the first one's.
                let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(&key)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Sealer::from_key(&key)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Sealer::load_or_create(path),
                    Err(e) => Err(err(e.to_string())),
                }
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Seals `plain`, bound to `context` (the secret's ARN and version id).
    pub fn seal(&self, plain: &[u8], context: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for inputs under 64 GiB");
        Sealed {
            nonce: b64().encode(nonce),
            ciphertext: b64().encode(data),
        }
    }

    /// Opens what `seal` made for the same `context`.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Vec<u8>, SealError> {
        let nonce: [u8; NONCE_LEN] = b64()
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SealError::Open)?;
        let mut data = b64().decode(&sealed.ciphertext).map_err(|_| SealError::Open)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let s = Sealer::from_key(&[7; KEY_LEN]);
        let sealed = s.seal(b"hunter2", "arn:a/v1");
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(s.open(&sealed, "arn:a/v1").unwrap(), b"hunter2");
        // Another record's context, another key, a flipped byte: refused.
        assert!(s.open(&sealed, "arn:b/v1").is_err());
        assert!(Sealer::from_key(&[8; KEY_LEN]).open(&sealed, "arn:a/v1").is_err());
        let mut bytes = b64().decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 1;
        let altered = Sealed {
            ciphertext: b64().encode(bytes),
            ..sealed.clone()
        };
        assert!(s.open(&altered, "arn:a/v1").is_err());
        // The same value sealed twice differs (fresh nonces).
        assert_ne!(s.seal(b"hunter2", "c").ciphertext, s.seal(b"hunter2", "c").ciphertext);
    }

    #[test]
    fn key_files_are_created_private_and_checked() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = Sealer::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = a.seal(b"x", "c");
        // Loaded again: the same key.
        assert_eq!(Sealer::load_or_create(&path).unwrap().open(&sealed, "c").unwrap(), b"x");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Sealer::load_or_create(&path)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Sealer::load_or_create(&short)
            .unwrap_err()
            .to_string()
            .contains("3 bytes"));
    }
}
