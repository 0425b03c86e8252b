//! Sets of request paths: exact paths and segment-aware prefixes.
//!
//! ```
//! use portcullis_tower::PathSet;
//!
//! let mut paths = PathSet::default();
//! paths.insert_exact("/healthz");
//! paths.insert_prefix("/static");
//! assert!(paths.matches("/healthz"));
//! assert!(paths.matches("/static/app.css"));
//! assert!(!paths.matches("/staticfoo"));
//! assert!(!paths.matches("/static/../admin"));
//! ```
//!
//! Matching fails closed: a path with a `.` or `..` segment, or any
//! percent-encoded dot, matches nothing, so that `/static/../admin` cannot
//! slip past the guard if something behind it normalises the path.

/// Exact paths and prefixes; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathSet {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl PathSet {
    /// Adds a path that matches only itself (e.g. `/healthz`).
    pub fn insert_exact(&mut self, path: impl Into<String>) {
        self.exact.push(path.into());
    }

    /// Adds a prefix that matches itself and everything below it:
    /// `/static` matches `/static` and `/static/x`, not `/staticx`.
    /// A trailing `/` is ignored; `/` matches every path.
    pub fn insert_prefix(&mut self, prefix: impl Into<String>) {
        let prefix = prefix.into();
        self.prefixes.push(prefix.trim_end_matches('/').to_owned());
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// True when `path` (the request path, without the query) matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.is_empty() || has_dot_segment(path) {
            return false;
        }
        self.exact.iter().any(|p| p == path)
            || self.prefixes.iter().any(|prefix| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
        || path
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'e' || w[2] == b'E'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix() {
        let mut p = PathSet::default();
        assert!(!p.matches("/"));
        p.insert_exact("/healthz");
        p.insert_prefix("/public/");
        assert!(p.matches("/healthz"));
        assert!(!p.matches("/healthz/x"));
        assert!(!p.matches("/healthzx"));
        assert!(p.matches("/public"));
        assert!(p.matches("/public/a/b"));
        assert!(!p.matches("/publicity"));
        assert!(!p.matches("//public"));
    }

    #[test]
    fn root_prefix_matches_everything() {
        let mut p = PathSet::default();
        p.insert_prefix("/");
        assert!(p.matches("/"));
        assert!(p.matches("/anything"));
    }

    #[test]
    fn dot_segments_fail_closed() {
        let mut p = PathSet::default();
        p.insert_prefix("/public");
        p.insert_exact("/healthz");
        for path in [
            "/public/../admin",
            "/public/./x",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
        ] {
            assert!(!p.matches(path), "{path}");
        }
        assert!(p.matches("/public/file.txt"));
        assert!(p.matches("/public/.well-known"));
    }
}
