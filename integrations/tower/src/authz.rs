//! Authorization rules: which callers, among those holding a valid token,
//! may pass.
//!
//! ```
//! use portcullis_tower::Rule;
//!
//! // People from example.com in the `eng` group, or the deploy bot.
//! let rule = Rule::email_domain("example.com")
//!     .and(Rule::group("eng"))
//!     .or(Rule::service_token("deploy-bot.access"));
//! # let _ = rule;
//! ```
//!
//! A rule that refuses yields [`ValidationError::Forbidden`], which every
//! integration answers with 403 `forbidden`. Rules are checked after the
//! token has been validated, so they only ever see genuine claims.
//!
//! The extension point is the [`Authorize`] trait; closures
//! `Fn(&AccessClaims) -> bool` implement it, and so does [`Rule`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use portcullis_core::{AccessClaims, Identity, ValidationError};

/// Decides whether the caller behind valid claims may pass.
///
/// Implemented by [`Rule`] and by closures `Fn(&AccessClaims) -> bool`
/// (a closure that returns `false` refuses with a generic reason).
pub trait Authorize: Send + Sync + 'static {
    /// `Ok(())` lets the caller through; `Err` should be
    /// [`ValidationError::Forbidden`].
    fn authorize(&self, claims: &AccessClaims) -> Result<(), ValidationError>;
}

impl<F> Authorize for F
where
    F: Fn(&AccessClaims) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, claims: &AccessClaims) -> Result<(), ValidationError> {
        if self(claims) {
            Ok(())
        } else {
            Err(forbidden("refused by a custom rule"))
        }
    }
}

/// A composable authorization rule; cheap to clone.
///
/// Email comparisons ignore ASCII case (as mail domains do); groups and
/// service-token common names match exactly.
#[derive(Clone)]
pub struct Rule(Arc<Kind>);

enum Kind {
    EmailDomains(Vec<String>),
    Emails(HashSet<String>),
    Groups(Vec<String>),
    ServiceTokens(HashSet<String>),
    Users,
    Custom(Box<dyn Authorize>),
    All(Vec<Rule>),
    Any(Vec<Rule>),
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Kind::EmailDomains(d) => f.debug_tuple("EmailDomains").field(d).finish(),
            Kind::Emails(e) => f.debug_tuple("Emails").field(&e.len()).finish(),
            Kind::Groups(g) => f.debug_tuple("Groups").field(g).finish(),
            Kind::ServiceTokens(s) => f.debug_tuple("ServiceTokens").field(s).finish(),
            Kind::Users => f.write_str("Users"),
            Kind::Custom(_) => f.write_str("Custom"),
            Kind::All(r) => f.debug_tuple("All").field(r).finish(),
            Kind::Any(r) => f.debug_tuple("Any").field(r).finish(),
        }
    }
}

fn forbidden(reason: &str) -> ValidationError {
    ValidationError::Forbidden {
        reason: reason.to_owned(),
    }
}

fn normalize_domain(domain: impl Into<String>) -> String {
    let domain = domain.into();
    domain.trim().trim_start_matches('@').to_ascii_lowercase()
}

impl Rule {
    fn new(kind: Kind) -> Self {
        Rule(Arc::new(kind))
    }

    /// The caller is a user whose email is at `domain` (exactly: a
    /// subdomain does not count). A leading `@` is ignored.
    pub fn email_domain(domain: impl Into<String>) -> Self {
        Self::email_domains([domain])
    }

    /// The caller is a user whose email is at one of `domains`.
    pub fn email_domains<I, S>(domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Kind::EmailDomains(
            domains.into_iter().map(normalize_domain).collect(),
        ))
    }

    /// The caller is a user whose email is one of `emails`.
    pub fn email_in<I, S>(emails: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Kind::Emails(
            emails
                .into_iter()
                .map(|e| e.into().trim().to_ascii_lowercase())
                .collect(),
        ))
    }

    /// The `groups` claim contains `group`.
    pub fn group(group: impl Into<String>) -> Self {
        Self::any_group([group])
    }

    /// The `groups` claim contains at least one of `groups`.
    pub fn any_group<I, S>(groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Kind::Groups(groups.into_iter().map(Into::into).collect()))
    }

    /// The caller is the service token with this common name (client id).
    pub fn service_token(common_name: impl Into<String>) -> Self {
        Self::service_tokens([common_name])
    }

    /// The caller is a service token with one of these common names.
    pub fn service_tokens<I, S>(common_names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Kind::ServiceTokens(
            common_names.into_iter().map(Into::into).collect(),
        ))
    }

    /// The caller is a person (any user token), not a service token.
    pub fn users() -> Self {
        Self::new(Kind::Users)
    }

    /// A user-supplied predicate over the claims.
    pub fn predicate<F>(predicate: F) -> Self
    where
        F: Fn(&AccessClaims) -> bool + Send + Sync + 'static,
    {
        Self::custom(predicate)
    }

    /// Any [`Authorize`] implementation, e.g. one with its own refusal reason.
    pub fn custom(authorize: impl Authorize) -> Self {
        Self::new(Kind::Custom(Box::new(authorize)))
    }

    /// Every rule must allow (an empty list allows everyone).
    pub fn all(rules: impl IntoIterator<Item = Rule>) -> Self {
        Self::new(Kind::All(rules.into_iter().collect()))
    }

    /// At least one rule must allow (an empty list refuses everyone).
    pub fn any(rules: impl IntoIterator<Item = Rule>) -> Self {
        Self::new(Kind::Any(rules.into_iter().collect()))
    }

    /// This rule and `other`.
    pub fn and(self, other: Rule) -> Self {
        Self::all([self, other])
    }

    /// This rule or `other`.
    pub fn or(self, other: Rule) -> Self {
        Self::any([self, other])
    }

    /// Checks the claims; `Err` is always [`ValidationError::Forbidden`]
    /// (for [`Rule::custom`], whatever the implementation returns).
    ///
    /// Handlers can use it directly: the extractor rejections of both
    /// integrations convert from [`ValidationError`].
    pub fn check(&self, claims: &AccessClaims) -> Result<(), ValidationError> {
        match &*self.0 {
            Kind::EmailDomains(domains) => {
                let domain = user_email(claims)
                    .and_then(|e| e.rsplit_once('@'))
                    .map(|(_, d)| d);
                match domain {
                    Some(d)
                        if domains
                            .iter()
                            .any(|allowed| allowed.eq_ignore_ascii_case(d)) =>
                    {
                        Ok(())
                    }
                    _ => Err(forbidden("email domain is not allowed")),
                }
            }
            Kind::Emails(emails) => match user_email(claims) {
                Some(e) if emails.contains(&e.to_ascii_lowercase()) => Ok(()),
                _ => Err(forbidden("email is not in the allowed set")),
            },
            Kind::Groups(groups) => {
                let held = claims.groups();
                if groups.iter().any(|g| held.contains(&g.as_str())) {
                    Ok(())
                } else {
                    Err(forbidden("not a member of a required group"))
                }
            }
            Kind::ServiceTokens(names) => match claims.identity() {
                Identity::Service { common_name } if names.contains(&common_name) => Ok(()),
                _ => Err(forbidden("not an allowed service token")),
            },
            Kind::Users => {
                if claims.is_service_token() {
                    Err(forbidden("service tokens are not allowed"))
                } else {
                    Ok(())
                }
            }
            Kind::Custom(authorize) => authorize.authorize(claims),
            Kind::All(rules) => rules.iter().try_for_each(|r| r.check(claims)),
            Kind::Any(rules) => {
                let mut last = None;
                for rule in rules {
                    match rule.check(claims) {
                        Ok(()) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(match (rules.len(), last) {
                    (1, Some(e)) => e,
                    _ => forbidden("no alternative allowed the caller"),
                })
            }
        }
    }
}

impl Authorize for Rule {
    fn authorize(&self, claims: &AccessClaims) -> Result<(), ValidationError> {
        self.check(claims)
    }
}

/// The email of a user token; service tokens have none.
fn user_email(claims: &AccessClaims) -> Option<&str> {
    if claims.is_service_token() {
        return None;
    }
    claims.email.as_deref().filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::ErrorCode;
    use serde_json::json;

    fn claims(v: serde_json::Value) -> AccessClaims {
        let mut base = json!({"aud": ["a"], "iss": "https://t.example", "exp": 1});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), v.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn user(email: &str) -> AccessClaims {
        claims(json!({"email": email, "sub": "u1", "groups": ["eng", "ops"]}))
    }

    fn service(cn: &str) -> AccessClaims {
        claims(json!({"sub": "", "common_name": cn}))
    }

    fn refused(r: Result<(), ValidationError>) -> bool {
        matches!(r, Err(ref e) if e.code() == ErrorCode::Forbidden)
    }

    #[test]
    fn email_domain_is_exact_and_case_insensitive() {
        let rule = Rule::email_domain("@Example.com");
        assert!(rule.check(&user("ada@example.COM")).is_ok());
        assert!(refused(rule.check(&user("ada@sub.example.com"))));
        assert!(refused(rule.check(&user("ada@evil-example.com"))));
        assert!(refused(rule.check(&user("example.com@evil.org"))));
        assert!(refused(rule.check(&user(""))));
        assert!(refused(rule.check(&service("example.com"))));
    }

    #[test]
    fn email_in_set() {
        let rule = Rule::email_in(["Ada@example.com", "bob@example.com"]);
        assert!(rule.check(&user("ada@EXAMPLE.com")).is_ok());
        assert!(refused(rule.check(&user("eve@example.com"))));
        assert!(refused(rule.check(&service("ada@example.com"))));
    }

    #[test]
    fn groups_from_the_groups_claim() {
        assert!(Rule::group("ops").check(&user("a@b.c")).is_ok());
        assert!(refused(Rule::group("OPS").check(&user("a@b.c"))));
        assert!(Rule::any_group(["x", "eng"]).check(&user("a@b.c")).is_ok());
        let single = claims(json!({"email": "a@b.c", "groups": "eng"}));
        assert!(Rule::group("eng").check(&single).is_ok());
        assert!(refused(Rule::group("eng").check(&service("svc"))));
    }

    #[test]
    fn service_tokens_and_users_are_told_apart() {
        let rule = Rule::service_token("bot.access");
        assert!(rule.check(&service("bot.access")).is_ok());
        assert!(refused(rule.check(&service("other.access"))));
        assert!(refused(rule.check(&user("bot.access"))));
        assert!(Rule::users().check(&user("a@b.c")).is_ok());
        assert!(refused(Rule::users().check(&service("bot.access"))));
    }

    #[test]
    fn predicates_and_composition() {
        let nz = Rule::predicate(|c: &AccessClaims| c.get("country") == Some(json!("NZ")));
        let nz_user = claims(json!({"email": "a@b.c", "country": "NZ"}));
        assert!(nz.check(&nz_user).is_ok());
        assert!(refused(nz.check(&user("a@b.c"))));

        let rule = Rule::email_domain("b.c")
            .and(Rule::group("eng"))
            .or(Rule::service_token("bot"));
        assert!(rule.check(&user("a@b.c")).is_ok());
        assert!(rule.check(&service("bot")).is_ok());
        assert!(refused(rule.check(&user("a@x.y"))));
        assert!(Rule::all([]).check(&user("a@b.c")).is_ok());
        assert!(refused(Rule::any([]).check(&user("a@b.c"))));
    }

    #[test]
    fn closures_implement_authorize() {
        fn boxed(a: impl Authorize) -> Box<dyn Authorize> {
            Box::new(a)
        }
        let a = boxed(|c: &AccessClaims| c.email.is_some());
        assert!(a.authorize(&user("a@b.c")).is_ok());
        assert!(refused(a.authorize(&service("bot"))));
    }
}
