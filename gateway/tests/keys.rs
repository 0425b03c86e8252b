//! Key rotation against a real database: automatic rotation publishes the
//! next key before it signs, and replicas racing to rotate create exactly
//! one key per generation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Backend;
use portcullis_gateway::config::KeysConfig;
use portcullis_gateway::crypto::MasterKey;
use portcullis_gateway::{KeyManager, SqlStore, Storage};

fn keys_config() -> KeysConfig {
    KeysConfig {
        rotate_every: Duration::from_secs(100),
        publish_ahead: Duration::from_secs(10),
        keep_previous: Duration::from_secs(50),
        certs_max_age: Duration::from_secs(5),
        reload_interval: Duration::from_secs(1),
    }
}

fn sqlite_url(b: &Backend) -> String {
    format!("{}?mode=rwc", b.url)
}

async fn manager(url: &str) -> KeyManager {
    let store: Arc<dyn Storage> = Arc::new(SqlStore::open(url, 4).await.unwrap());
    KeyManager::new(
        store,
        Arc::new(MasterKey::from_bytes(&[9u8; 32])),
        keys_config(),
        "http://auth.test".into(),
        vec!["a".repeat(64)],
    )
}

async fn automatic_rotation_and_racing_replicas(url: String) {
    let a = manager(&url).await;
    let b = manager(&url).await;
    let t0 = portcullis_gateway::clock::now();
    // Two replicas start at once: one first key.
    let (ra, rb) = tokio::join!(a.maintain(t0), b.maintain(t0));
    ra.unwrap();
    rb.unwrap();
    a.reload(t0).await.unwrap();
    b.reload(t0).await.unwrap();
    assert_eq!(a.ring().keys().len(), 1);
    let first = a.ring().signer(t0).unwrap().kid().to_owned();
    assert_eq!(b.ring().signer(t0).unwrap().kid(), first);

    // Not due yet: nothing new.
    a.maintain(t0 + 50).await.unwrap();
    assert_eq!(a.list().await.unwrap().len(), 1);

    // Due (rotate_every - publish_ahead): both replicas try; one key wins.
    let due = t0 + 90;
    let (ra, rb) = tokio::join!(a.maintain(due), b.maintain(due));
    ra.unwrap();
    rb.unwrap();
    a.reload(due).await.unwrap();
    b.reload(due).await.unwrap();
    let ring = a.ring();
    assert_eq!(ring.keys().len(), 2, "exactly one new key, published");
    let next = ring.keys()[1].kid().to_owned();
    assert_eq!(
        ring.keys()[1].activates_at(),
        ring.keys()[0].activates_at() + 100
    );
    // Published before it signs: the old key still signs until activation.
    assert_eq!(ring.signer(due).unwrap().kid(), first);
    assert_eq!(ring.signer(t0 + 100).unwrap().kid(), next);
    assert_eq!(
        b.ring().signer(t0 + 100).unwrap().kid(),
        next,
        "replicas agree"
    );
    let doc = ring.certs_document(due);
    assert_eq!(doc["keys"].as_array().unwrap().len(), 2);
    assert_eq!(doc["public_cert"]["kid"], first.as_str());

    // The previous key stays published for keep_previous after it stops signing.
    a.reload(t0 + 100 + 49).await.unwrap();
    assert_eq!(a.ring().keys().len(), 2);
    a.reload(t0 + 100 + 51).await.unwrap();
    assert_eq!(a.ring().keys().len(), 1);
    assert_eq!(a.ring().keys()[0].kid(), next);

    // A different master key cannot read the keys.
    let store: Arc<dyn Storage> = Arc::new(SqlStore::open(&url, 2).await.unwrap());
    let wrong = KeyManager::new(
        store,
        Arc::new(MasterKey::from_bytes(&[1u8; 32])),
        keys_config(),
        "http://auth.test".into(),
        vec![],
    );
    let err = wrong.reload(t0).await.unwrap_err();
    assert!(err.to_string().contains("master key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_sqlite() {
    let b = Backend::sqlite();
    std::fs::create_dir_all(b.dir.join("data")).unwrap();
    automatic_rotation_and_racing_replicas(sqlite_url(&b)).await;
    b.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_postgres() {
    if let Some(b) = Backend::postgres().await {
        automatic_rotation_and_racing_replicas(b.url.clone()).await;
        b.cleanup().await;
    }
}
