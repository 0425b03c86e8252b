//! Who a request speaks for, as the policy engine sees it.
//!
//! Part 1 of the gateway admits service tokens; logins (part 2) add users
//! with a `login_method` (the identity provider's id) and groups. Both
//! flow through [`Principal`], so policies and the audit log treat them
//! alike.

use std::net::IpAddr;

/// A logged-in person.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserIdentity {
    /// Email address (lowercase).
    pub email: String,
    /// Stable user id at the identity provider.
    pub sub: String,
    /// Display name, when known.
    pub name: Option<String>,
    /// Groups from the identity provider.
    pub groups: Vec<String>,
    /// The identity provider's id (`[[identity_providers]] id`).
    pub login_method: Option<String>,
}

/// An authenticated service token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// The token's name (what policies select on).
    pub name: String,
    /// The client id, `<32 hex>.access` (the token's `common_name`).
    pub client_id: String,
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Nobody authenticated.
    Anonymous,
    /// A person.
    User(UserIdentity),
    /// A service token.
    Service(ServiceIdentity),
}

impl Principal {
    /// How the audit log names the caller: the email, the client id, or `""`.
    pub fn audit_name(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::User(u) => &u.email,
            Principal::Service(s) => &s.client_id,
        }
    }

    /// `anonymous`, `user` or `service_token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::User(_) => "user",
            Principal::Service(_) => "service_token",
        }
    }
}

/// What a policy may look at besides the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The peer address.
    pub source_ip: IpAddr,
    /// Two-letter country from the configured header (uppercase).
    pub country: Option<String>,
}
