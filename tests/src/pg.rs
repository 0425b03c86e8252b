//! A fresh PostgreSQL database per test on the local server
//! (`postgres://postgres@127.0.0.1:5432`), dropped at the end.

use sqlx::Connection as _;

/// The maintenance database the harness connects to for CREATE/DROP.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test; dropped (`WITH (FORCE)`) on drop.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates `portcullis_e2e_<random>`. `None` after [`crate::tools::skip`]
    /// when no server answers (a failure under `CI=true`).
    pub async fn create() -> Option<PgDatabase> {
        let mut conn = match sqlx::PgConnection::connect(PG_ADMIN_URL).await {
            Ok(c) => c,
            Err(e) => {
                crate::tools::skip(&format!("PostgreSQL at 127.0.0.1:5432 ({e})"));
                return None;
            }
        };
        let name = format!(
            "portcullis_e2e_{}",
            portcullis_core::test_support::random_hex(6)
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        Some(PgDatabase {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }

    /// The connection URL (no password: the local server trusts `postgres`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection to the database, for checks behind the gateway's back.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async work on a
        // thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
