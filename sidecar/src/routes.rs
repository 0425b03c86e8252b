//! The route table: which validator, upstream and header mapping serve a
//! request's `Host`.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use portcullis_core::{CoreMetrics, KeySource, Validator};

use crate::config::{RouteSettings, SettingsError, Upstream, normalize_host};
use crate::inject::HeaderMapping;

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    settings: RouteSettings,
    validator: Validator,
}

impl Route {
    /// Label used in logs and metrics.
    pub fn name(&self) -> &str {
        self.settings.name()
    }
    /// Where accepted requests go (`None` in forward-auth mode).
    pub fn upstream(&self) -> Option<&Upstream> {
        self.settings.upstream.as_ref()
    }
    /// Validates this route's tokens.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }
    /// Headers injected on acceptance.
    pub fn headers(&self) -> &HeaderMapping {
        &self.settings.headers
    }
}

/// Routes by host plus an optional default.
#[derive(Debug)]
pub struct RouteTable {
    by_host: HashMap<String, Arc<Route>>,
    default: Option<Arc<Route>>,
    injectable: Vec<HeaderName>,
}

impl RouteTable {
    /// Builds a validator per route; all share `keys`.
    pub fn build(
        default: Option<&RouteSettings>,
        routes: &[RouteSettings],
        team_domain: &str,
        keys: &KeySource,
        max_token_bytes: usize,
        metrics: &CoreMetrics,
    ) -> Result<Self, SettingsError> {
        let make = |r: &RouteSettings, key: String| -> Result<Arc<Route>, SettingsError> {
            let validator = Validator::builder(team_domain)
                .audiences(r.audiences.iter().cloned())
                .key_source(keys.clone())
                .max_token_size(max_token_bytes)
                .metrics(metrics.clone())
                .build()
                .map_err(|e| SettingsError {
                    key,
                    message: e.to_string(),
                })?;
            Ok(Arc::new(Route {
                settings: r.clone(),
                validator,
            }))
        };
        let default = default
            .map(|r| make(r, "audience (--audience / PORTCULLIS_AUDIENCE)".into()))
            .transpose()?;
        let mut by_host = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let route = make(r, format!("routes[{i}].audiences"))?;
            if let Some(host) = &r.host {
                by_host.insert(host.clone(), route);
            }
        }
        let mut injectable: Vec<HeaderName> = Vec::new();
        for route in default.iter().chain(by_host.values()) {
            for name in route.headers().names() {
                if !injectable.contains(name) {
                    injectable.push(name.clone());
                }
            }
        }
        Ok(RouteTable {
            by_host,
            default,
            injectable,
        })
    }

    /// The route for a `Host` value (port and case ignored).
    pub fn find(&self, host: Option<&str>) -> Option<&Arc<Route>> {
        if !self.by_host.is_empty()
            && let Some(route) = host
                .and_then(normalize_host)
                .and_then(|h| self.by_host.get(&h))
        {
            return Some(route);
        }
        self.default.as_ref()
    }

    /// Every header any route can inject: stripped from all requests.
    pub fn injectable(&self) -> &[HeaderName] {
        &self.injectable
    }

    /// All routes (for readiness).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.default.iter().chain(self.by_host.values())
    }
}
