//! Limits on failed credential attempts, per client id and per source
//! address, in fixed windows. Only failures are counted, so a working bot
//! is never slowed; the table is bounded so a flood of random client ids
//! cannot grow it without limit (the per-address limit still applies).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(String),
    Address(IpAddr),
}

/// Counts failures and says when a caller must wait.
#[derive(Debug)]
pub struct FailureLimiter {
    window: Duration,
    per_client: u32,
    per_address: u32,
    counts: Mutex<HashMap<Key, (Instant, u32)>>,
}

impl FailureLimiter {
    /// At most `per_client` / `per_address` failures per `window`.
    pub fn new(window: Duration, per_client: u32, per_address: u32) -> Self {
        FailureLimiter {
            window,
            per_client,
            per_address,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, map: &HashMap<Key, (Instant, u32)>, key: &Key, now: Instant) -> u32 {
        match map.get(key) {
            Some((start, n)) if now.duration_since(*start) < self.window => *n,
            _ => 0,
        }
    }

    /// Whether this client id or address has used up its failures.
    pub fn is_limited(&self, client_id: &str, address: IpAddr) -> bool {
        let now = Instant::now();
        let map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        self.count(&map, &Key::Client(client_id.to_owned()), now) >= self.per_client
            || self.count(&map, &Key::Address(address), now) >= self.per_address
    }

    /// Records a failed attempt.
    pub fn record_failure(&self, client_id: &str, address: IpAddr) {
        let now = Instant::now();
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let bump = |key: Key, map: &mut HashMap<Key, (Instant, u32)>| {
            if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
                return;
            }
            let entry = map.entry(key).or_insert((now, 0));
            if now.duration_since(entry.0) >= self.window {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        };
        bump(Key::Address(address), &mut map);
        // Truncated: attacker-chosen ids must not make keys large.
        let id: String = client_id.chars().take(64).collect();
        bump(Key::Client(id), &mut map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_per_address() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let l = FailureLimiter::new(Duration::from_secs(60), 2, 3);
        assert!(!l.is_limited("a", ip));
        l.record_failure("a", ip);
        l.record_failure("a", ip);
        assert!(
            l.is_limited("a", other),
            "client id limit holds from any address"
        );
        assert!(!l.is_limited("b", other));
        l.record_failure("b", ip);
        assert!(
            l.is_limited("c", ip),
            "address limit holds for any client id"
        );
        assert!(!l.is_limited("c", other));
        let short = FailureLimiter::new(Duration::from_millis(20), 1, 1);
        short.record_failure("a", ip);
        assert!(short.is_limited("a", ip));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!short.is_limited("a", ip), "windows expire");
    }
}
