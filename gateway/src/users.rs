//! Local users: a TOML file of people with argon2id password hashes.
//!
//! ```toml
//! [[users]]
//! email = "alice@example.com"
//! name = "Alice"
//! groups = ["eng"]
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # portcullis-gateway hash-password
//! ```
//!
//! The file is re-read when its modification time or size changes (checked
//! at each login attempt, so an edit applies to the next one). Passwords
//! are verified on a blocking thread; an unknown email is checked against
//! a dummy hash so that answering takes the same work either way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2};
use serde::Deserialize;

use crate::identity::UserIdentity;

/// Problems with the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("cannot read the users file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("users file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    email: String,
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    password_hash: String,
}

/// One local user.
#[derive(Clone)]
pub struct LocalUser {
    /// Email (lowercase).
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    password_hash: String,
}

impl std::fmt::Debug for LocalUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalUser")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Hashes a password with argon2id and the crate's default (OWASP) cost;
/// returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn parse(text: &str, path: &str) -> Result<HashMap<String, LocalUser>, UsersError> {
    let invalid = |message: String| UsersError::Invalid {
        path: path.to_owned(),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
    let mut users = HashMap::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let email = u.email.trim().to_ascii_lowercase();
        if !email.contains('@') {
            return Err(invalid(format!(
                "users[{i}].email {:?} is not an email address",
                u.email
            )));
        }
        let hash = PasswordHash::new(&u.password_hash).map_err(|_| {
            invalid(format!(
                "users[{i}].password_hash is not a PHC string; make one with `portcullis-gateway hash-password`"
            ))
        })?;
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return Err(invalid(format!(
                "users[{i}].password_hash must be argon2id; make one with `portcullis-gateway hash-password`"
            )));
        }
        if users.contains_key(&email) {
            return Err(invalid(format!(
                "users[{i}].email {email:?} is listed twice"
            )));
        }
        users.insert(
            email.clone(),
            LocalUser {
                email,
                name: u.name.filter(|n| !n.trim().is_empty()),
                groups: u.groups,
                password_hash: u.password_hash,
            },
        );
    }
    Ok(users)
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    users: Arc<HashMap<String, LocalUser>>,
}

/// The local-users provider: the file, re-read on change.
#[derive(Debug)]
pub struct LocalUsers {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    dummy_hash: String,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl LocalUsers {
    /// Loads `path`; an unreadable or invalid file is an error at start.
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: display.clone(),
            source,
        })?;
        let users = parse(&text, &display)?;
        Ok(LocalUsers {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp: stamp(path),
                users: Arc::new(users),
            }),
            // Same algorithm and cost as real hashes, for equal work.
            dummy_hash: hash_password(&crate::crypto::random_hex::<16>())
                .unwrap_or_else(|_| String::new()),
        })
    }

    /// The users, re-reading the file when it changed. A file that became
    /// invalid is reported in the log and the previous users are kept.
    pub fn users(&self) -> Arc<HashMap<String, LocalUser>> {
        let now_stamp = stamp(&self.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if now_stamp != loaded.stamp {
            loaded.stamp = now_stamp;
            let display = self.path.display().to_string();
            match std::fs::read_to_string(&self.path)
                .map_err(|source| UsersError::Io {
                    path: display.clone(),
                    source,
                })
                .and_then(|text| parse(&text, &display))
            {
                Ok(users) => {
                    tracing::info!(users = users.len(), "users file reloaded");
                    loaded.users = Arc::new(users);
                }
                Err(e) => tracing::error!(error = %e, "users file not reloaded"),
            }
        }
        loaded.users.clone()
    }

    /// Checks a password on a blocking thread; the same work is done for
    /// unknown emails. Returns the user on success.
    pub async fn authenticate(&self, email: &str, password: &str) -> Option<LocalUser> {
        let email = email.trim().to_ascii_lowercase();
        // A stat of a small file; re-reading happens only after an edit.
        let users = self.users();
        let user = users.get(&email).cloned();
        let hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if ok { user } else { None }
    }
}

impl LocalUser {
    /// The identity of this user logged in through provider `idp`.
    pub fn identity(&self, idp: &str) -> UserIdentity {
        UserIdentity {
            email: self.email.clone(),
            sub: self.email.clone(),
            name: self.name.clone(),
            groups: self.groups.clone(),
            login_method: Some(idp.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_round_trip_and_reload() {
        let dir =
            std::env::temp_dir().join(format!("pc-users-{}", crate::crypto::random_hex::<6>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        std::fs::write(
            &path,
            format!("[[users]]\nemail = \"Alice@Example.com\"\ngroups = [\"eng\"]\npassword_hash = \"{hash}\"\n"),
        )
        .unwrap();
        let users = LocalUsers::load(&path).unwrap();
        assert!(
            users
                .authenticate("alice@example.com", "correct horse")
                .await
                .is_some()
        );
        assert!(
            users
                .authenticate("alice@example.com", "wrong")
                .await
                .is_none()
        );
        assert!(
            users
                .authenticate("bob@example.com", "correct horse")
                .await
                .is_none()
        );
        std::fs::write(
            &path,
            format!(
                "[[users]]\nemail = \"bob@example.com\"\npassword_hash = \"{hash}\"\n# changed\n"
            ),
        )
        .unwrap();
        assert!(
            users
                .authenticate("bob@example.com", "correct horse")
                .await
                .is_some()
        );
        assert!(
            users
                .authenticate("alice@example.com", "correct horse")
                .await
                .is_none()
        );
        assert!(
            parse(
                "[[users]]\nemail = \"x@y\"\npassword_hash = \"plain\"\n",
                "f"
            )
            .is_err()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
