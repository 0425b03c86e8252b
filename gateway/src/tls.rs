//! TLS on the public listener: `[server] tls_cert` / `tls_key` (PEM),
//! served with rustls on the aws-lc-rs provider (the one reqwest already
//! brings, so there is a single crypto provider in the build).
//!
//! The files are read and checked when the configuration is loaded, so
//! `portcullis-gateway check` reports a missing file, a file without a
//! usable PEM block, or a key that does not belong to the certificate,
//! each under the key that names the file. Nothing of the key's content
//! ends up in a message.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What is wrong with the TLS files, under the configuration key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIssue {
    /// `server.tls_cert` or `server.tls_key`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

const CERT_KEY: &str = "server.tls_cert";
const KEY_KEY: &str = "server.tls_key";

fn issue(key: &'static str, message: impl Into<String>) -> TlsIssue {
    TlsIssue {
        key,
        message: message.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsIssue> {
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        issue(key, format!("cannot read {}: {why}", path.display()))
    })
}

/// The rustls provider the gateway serves with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads the certificate chain and private key (PEM) and builds the
/// server configuration (ALPN `h2`, `http/1.1`). Every problem found is
/// returned, each naming its key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<rustls::ServerConfig>, Vec<TlsIssue>> {
    let mut issues = Vec::new();
    let certs = match read(CERT_KEY, cert_path) {
        Ok(pem) => match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if certs.is_empty() => {
                issues.push(issue(
                    CERT_KEY,
                    format!("{} holds no PEM \"CERTIFICATE\" block", cert_path.display()),
                ));
                None
            }
            Ok(certs) => Some(certs),
            Err(_) => {
                issues.push(issue(
                    CERT_KEY,
                    format!(
                        "{} is not valid PEM (a \"CERTIFICATE\" block is malformed)",
                        cert_path.display()
                    ),
                ));
                None
            }
        },
        Err(i) => {
            issues.push(i);
            None
        }
    };
    let key = match read(KEY_KEY, key_path) {
        Ok(pem) => match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(key) => Some(key),
            Err(_) => {
                issues.push(issue(
                    KEY_KEY,
                    format!(
                        "{} holds no usable PEM private key (\"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
                        key_path.display()
                    ),
                ));
                None
            }
        },
        Err(i) => {
            issues.push(i);
            None
        }
    };
    let (Some(certs), Some(key)) = (certs, key) else {
        return Err(issues);
    };
    let built = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![issue(CERT_KEY, format!("TLS set-up failed: {e}"))])?
        .with_no_client_auth()
        .with_single_cert(certs, key);
    let mut config = match built {
        Ok(c) => c,
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(vec![issue(
                KEY_KEY,
                format!(
                    "the private key in {} does not belong to the certificate in {}",
                    key_path.display(),
                    cert_path.display()
                ),
            )]);
        }
        Err(_) => {
            return Err(vec![issue(
                KEY_KEY,
                format!(
                    "the private key in {} is not usable (unsupported type or malformed)",
                    key_path.display()
                ),
            )]);
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_a_matching_pair_and_names_each_problem() {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-tls-{}",
            crate::crypto::random_hex::<6>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair("a.test");
        let (_, other_key) = pair("b.test");
        let cert_p = write(&dir, "cert.pem", &cert);
        let key_p = write(&dir, "key.pem", &key);
        let config = load(&cert_p, &key_p).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");

        let missing = load(&dir.join("nope.pem"), &key_p).unwrap_err();
        assert_eq!(missing[0].key, CERT_KEY);
        assert!(missing[0].message.contains("no such file"), "{missing:?}");

        let garbage = write(&dir, "garbage.pem", "not pem at all\n");
        let bad = load(&garbage, &garbage).unwrap_err();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].key, CERT_KEY);
        assert_eq!(bad[1].key, KEY_KEY);

        let broken = write(
            &dir,
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        assert_eq!(load(&broken, &key_p).unwrap_err()[0].key, CERT_KEY);

        let other_p = write(&dir, "other.pem", &other_key);
        let mismatch = load(&cert_p, &other_p).unwrap_err();
        assert_eq!(mismatch[0].key, KEY_KEY);
        assert!(
            mismatch[0].message.contains("does not belong"),
            "{mismatch:?}"
        );
        assert!(!mismatch[0].message.contains("PRIVATE KEY-----"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
