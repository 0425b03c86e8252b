//! Small cryptographic building blocks: randomness, hashing, constant-time
//! comparison and the at-rest encryption of signing keys.
//!
//! Private signing keys are sealed with AES-256-GCM under a 32-byte master
//! key (from `PORTCULLIS_MASTER_KEY`, or a `0600` key file created in the
//! data directory on first start). The key id is bound as associated data,
//! so a ciphertext moved to another row does not decrypt.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Name of the master key file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// `n` random bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .unwrap_or_else(|_| fallback_fill(&mut out));
    out
}

// aws-lc's RNG does not fail in practice; should it, fall back to the
// thread RNG (also a CSPRNG) rather than panic on a request path.
fn fallback_fill(out: &mut [u8]) {
    use rand::RngCore as _;
    rand::rng().fill_bytes(out);
}

/// `N` random bytes as lowercase hex (`2 * N` characters).
pub fn random_hex<const N: usize>() -> String {
    hex::encode(random_bytes::<N>())
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// base64url without padding.
pub fn b64url(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Problems with the master key.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// `PORTCULLIS_MASTER_KEY` or the key file does not hold 64 hex chars.
    #[error(
        "{origin} must hold exactly 64 hex characters (32 bytes); generate one with `openssl rand -hex 32`"
    )]
    Malformed {
        /// Where the key came from.
        origin: String,
    },
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by others.
    #[error("master key file {path} is readable by group or others; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: String,
    },
}

/// The key that encrypts signing keys at rest.
pub struct MasterKey {
    key: LessSafeKey,
    fingerprint: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A master key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 accepts 32-byte keys");
        // A public, non-secret identifier: lets operators check that every
        // replica uses the same key without revealing it.
        let fingerprint =
            sha256_hex(&[b"portcullis-master-key:".as_slice(), bytes].concat())[..16].to_owned();
        MasterKey {
            key: LessSafeKey::new(unbound),
            fingerprint,
        }
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, MasterKeyError> {
        let malformed = || MasterKeyError::Malformed {
            origin: origin.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key from `env_value` when given, else from `data_dir/master.key`,
    /// creating that file (mode 0600) with a fresh key when it is absent.
    pub fn load_or_create(
        env_value: Option<&str>,
        data_dir: &Path,
    ) -> Result<Self, MasterKeyError> {
        if let Some(value) = env_value {
            return Self::from_hex(value, "PORTCULLIS_MASTER_KEY");
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let display = path.display().to_string();
        let io = |source| MasterKeyError::Io {
            path: display.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_permissions(&path, &display)?;
                Self::from_hex(&text, &display)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_bytes::<32>();
                write_private_file(&path, format!("{}\n", hex::encode(bytes)).as_bytes())
                    .map_err(io)?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A short public fingerprint of the key (not secret).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Encrypts `plaintext` bound to `context`; returns base64 of
    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing of a bounded buffer");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        STANDARD.encode(out)
    }

    /// Decrypts what [`MasterKey::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = STANDARD.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, display: &str) -> Result<(), MasterKeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| MasterKeyError::Io {
            path: display.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(MasterKeyError::Permissions {
            path: display.to_owned(),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &str) -> Result<(), MasterKeyError> {
    Ok(())
}

fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let key = MasterKey::from_bytes(&[7u8; 32]);
        let sealed = key.seal("kid-a", b"secret");
        assert_eq!(key.open("kid-a", &sealed).unwrap(), b"secret");
        assert!(key.open("kid-b", &sealed).is_none());
        let other = MasterKey::from_bytes(&[8u8; 32]);
        assert!(other.open("kid-a", &sealed).is_none());
        assert!(key.open("kid-a", "%%%").is_none());
        assert!(key.open("kid-a", "AAAA").is_none());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("pg-mk-{}", random_hex::<8>()));
        let a = MasterKey::load_or_create(None, &dir).unwrap();
        let b = MasterKey::load_or_create(None, &dir).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(MasterKey::load_or_create(Some("zz"), &dir).is_err());
        let env = MasterKey::load_or_create(Some(&"ab".repeat(32)), &dir).unwrap();
        assert_ne!(env.fingerprint(), a.fingerprint());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
