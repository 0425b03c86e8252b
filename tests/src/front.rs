//! A TCP front door for gateway replicas, as a load balancer would be: each
//! connection goes to the next backend in turn, skipping backends that
//! refuse the connection (a killed replica).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// A running front door.
#[derive(Debug)]
pub struct Front {
    /// The port clients use.
    pub port: u16,
}

impl Front {
    /// Listens on `listener` (bind it first: the replicas' configuration
    /// names its port) and balances over `backends` (ports on 127.0.0.1).
    pub fn start(listener: TcpListener, backends: Vec<u16>) -> Front {
        let port = listener.local_addr().expect("addr").port();
        let next = Arc::new(AtomicUsize::new(0));
        let backends: Arc<Vec<SocketAddr>> = Arc::new(
            backends
                .into_iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
        );
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let backends = backends.clone();
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let addr = backends[(start + i) % backends.len()];
                        if let Ok(mut outbound) = TcpStream::connect(addr).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Front { port }
    }
}
