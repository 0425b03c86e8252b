//! The policy engine: include / require / exclude selectors and the
//! Cloudflare Access evaluation order.
//!
//! A policy matches when at least one `include` selector matches, every
//! `require` selector matches and no `exclude` selector matches. Policies
//! are tried in this order: first the `bypass` and `service_auth` policies
//! in their listed order, then the `allow` and `block` policies in their
//! listed order; the first that matches decides. Nothing matches: deny.
//!
//! `service_auth` admits only service tokens and `allow` only people (as
//! at Cloudflare, a service token does not satisfy an `allow` policy);
//! `bypass` and `block` apply to every caller.
//!
//! ```
//! use portcullis_gateway::identity::{Principal, RequestContext, ServiceIdentity};
//! use portcullis_gateway::policy::{evaluate, Decision, Outcome, Policy, Selector};
//!
//! let policies = vec![Policy {
//!     name: "bots".into(),
//!     decision: Decision::ServiceAuth,
//!     include: vec![Selector::ServiceToken("report-bot".into())],
//!     require: vec![],
//!     exclude: vec![],
//! }];
//! let bot = Principal::Service(ServiceIdentity { name: "report-bot".into(), client_id: "x.access".into() });
//! let ctx = RequestContext { source_ip: "127.0.0.1".parse().unwrap(), country: None };
//! assert_eq!(evaluate(&policies, &bot, &ctx), Outcome::Matched { policy: 0, decision: Decision::ServiceAuth });
//! ```

use crate::identity::{Principal, RequestContext};

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admit people who match.
    Allow,
    /// Refuse whoever matches.
    Block,
    /// Forward without identity.
    Bypass,
    /// Admit service tokens that match.
    ServiceAuth,
}

impl Decision {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Block => "block",
            Decision::Bypass => "bypass",
            Decision::ServiceAuth => "service_auth",
        }
    }
}

/// One selector of an include / require / exclude list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every caller, anonymous included.
    Everyone,
    /// A user with this email (compared case-insensitively).
    Email(String),
    /// A user whose email is at this domain (lowercase, no `@`).
    EmailDomain(String),
    /// A user in this group.
    Group(String),
    /// A source address inside this network.
    Ip(ipnet::IpNet),
    /// The service token with this name.
    ServiceToken(String),
    /// Any authenticated service token.
    AnyValidServiceToken,
    /// A user who logged in with this identity provider id.
    LoginMethod(String),
    /// A request from this country (uppercase two-letter code).
    Country(String),
}

impl Selector {
    /// Whether the selector matches this caller and request.
    pub fn matches(&self, who: &Principal, ctx: &RequestContext) -> bool {
        match (self, who) {
            (Selector::Everyone, _) => true,
            (Selector::Ip(net), _) => net.contains(&ctx.source_ip),
            (Selector::Country(code), _) => ctx
                .country
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(code)),
            (Selector::Email(email), Principal::User(u)) => u.email.eq_ignore_ascii_case(email),
            (Selector::EmailDomain(domain), Principal::User(u)) => u
                .email
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
            (Selector::Group(group), Principal::User(u)) => u.groups.iter().any(|g| g == group),
            (Selector::LoginMethod(id), Principal::User(u)) => {
                u.login_method.as_deref() == Some(id.as_str())
            }
            (Selector::ServiceToken(name), Principal::Service(s)) => &s.name == name,
            (Selector::AnyValidServiceToken, Principal::Service(_)) => true,
            _ => false,
        }
    }
}

/// A named rule of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Name (shown in the audit log).
    pub name: String,
    /// What happens when it matches.
    pub decision: Decision,
    /// Any of these must match.
    pub include: Vec<Selector>,
    /// All of these must match.
    pub require: Vec<Selector>,
    /// None of these may match.
    pub exclude: Vec<Selector>,
}

impl Policy {
    /// Whether the policy's selectors match (ignoring whom its decision applies to).
    pub fn selectors_match(&self, who: &Principal, ctx: &RequestContext) -> bool {
        self.include.iter().any(|s| s.matches(who, ctx))
            && self.require.iter().all(|s| s.matches(who, ctx))
            && !self.exclude.iter().any(|s| s.matches(who, ctx))
    }

    /// Whether this policy applies to this kind of caller at all.
    fn applies_to(&self, who: &Principal) -> bool {
        match self.decision {
            Decision::ServiceAuth => matches!(who, Principal::Service(_)),
            Decision::Allow => matches!(who, Principal::User(_)),
            Decision::Bypass | Decision::Block => true,
        }
    }
}

/// The result of evaluating an app's policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Policy number `policy` (index into the app's list) decided.
    Matched {
        /// Index of the deciding policy.
        policy: usize,
        /// Its decision.
        decision: Decision,
    },
    /// No policy matched: deny.
    NoMatch,
}

/// Evaluates `policies` in Cloudflare Access order; see the module docs.
pub fn evaluate(policies: &[Policy], who: &Principal, ctx: &RequestContext) -> Outcome {
    let first_pass = |d: Decision| matches!(d, Decision::Bypass | Decision::ServiceAuth);
    let order = policies
        .iter()
        .enumerate()
        .filter(|(_, p)| first_pass(p.decision))
        .chain(
            policies
                .iter()
                .enumerate()
                .filter(|(_, p)| !first_pass(p.decision)),
        );
    for (i, policy) in order {
        if policy.applies_to(who) && policy.selectors_match(who, ctx) {
            return Outcome::Matched {
                policy: i,
                decision: policy.decision,
            };
        }
    }
    Outcome::NoMatch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ServiceIdentity, UserIdentity};
    use Decision::*;
    use Selector::*;

    fn user(email: &str, groups: &[&str], idp: Option<&str>) -> Principal {
        Principal::User(UserIdentity {
            email: email.into(),
            sub: "u1".into(),
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            login_method: idp.map(Into::into),
        })
    }
    fn bot(name: &str) -> Principal {
        Principal::Service(ServiceIdentity {
            name: name.into(),
            client_id: format!("{}.access", "a".repeat(32)),
        })
    }
    fn ctx(ip: &str, country: Option<&str>) -> RequestContext {
        RequestContext {
            source_ip: ip.parse().unwrap(),
            country: country.map(Into::into),
        }
    }
    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }
    fn policy(name: &str, decision: Decision, include: Vec<Selector>) -> Policy {
        Policy {
            name: name.into(),
            decision,
            include,
            require: vec![],
            exclude: vec![],
        }
    }

    #[test]
    fn every_selector_against_every_kind_of_caller() {
        let alice = user("Alice@Example.com", &["eng"], Some("corp"));
        let anon = Principal::Anonymous;
        let rb = bot("report-bot");
        let here = ctx("10.1.2.3", Some("de"));
        let v6 = ctx("2001:db8::1", None);
        // (selector, caller, context, expected)
        let table: Vec<(Selector, &Principal, &RequestContext, bool)> = vec![
            (Everyone, &anon, &here, true),
            (Everyone, &alice, &here, true),
            (Everyone, &rb, &here, true),
            (Email("alice@example.com".into()), &alice, &here, true),
            (Email("bob@example.com".into()), &alice, &here, false),
            (Email("alice@example.com".into()), &rb, &here, false),
            (Email("alice@example.com".into()), &anon, &here, false),
            (EmailDomain("example.com".into()), &alice, &here, true),
            (EmailDomain("ample.com".into()), &alice, &here, false),
            (EmailDomain("example.com".into()), &rb, &here, false),
            (Group("eng".into()), &alice, &here, true),
            (Group("ops".into()), &alice, &here, false),
            (Group("eng".into()), &rb, &here, false),
            (Ip(net("10.0.0.0/8")), &alice, &here, true),
            (Ip(net("10.0.0.0/8")), &anon, &here, true),
            (Ip(net("10.0.0.0/8")), &rb, &here, true),
            (Ip(net("192.168.0.0/16")), &alice, &here, false),
            (Ip(net("2001:db8::/32")), &alice, &v6, true),
            (Ip(net("10.0.0.0/8")), &alice, &v6, false),
            (ServiceToken("report-bot".into()), &rb, &here, true),
            (ServiceToken("other-bot".into()), &rb, &here, false),
            (ServiceToken("report-bot".into()), &alice, &here, false),
            (ServiceToken("report-bot".into()), &anon, &here, false),
            (AnyValidServiceToken, &rb, &here, true),
            (AnyValidServiceToken, &alice, &here, false),
            (AnyValidServiceToken, &anon, &here, false),
            (LoginMethod("corp".into()), &alice, &here, true),
            (LoginMethod("local".into()), &alice, &here, false),
            (LoginMethod("corp".into()), &rb, &here, false),
            (Country("DE".into()), &alice, &here, true),
            (Country("FR".into()), &alice, &here, false),
            (Country("DE".into()), &alice, &v6, false),
            (Country("DE".into()), &rb, &here, true),
        ];
        for (i, (selector, who, c, expected)) in table.iter().enumerate() {
            assert_eq!(
                selector.matches(who, c),
                *expected,
                "row {i}: {selector:?} vs {who:?}"
            );
        }
    }

    #[test]
    fn include_require_exclude() {
        let alice = user("alice@example.com", &["eng"], Some("corp"));
        let here = ctx("10.1.2.3", Some("DE"));
        let mut p = policy(
            "p",
            Allow,
            vec![
                Email("nobody@x.y".into()),
                EmailDomain("example.com".into()),
            ],
        );
        assert!(p.selectors_match(&alice, &here), "include: any");
        p.require = vec![Group("eng".into()), Ip(net("10.0.0.0/8"))];
        assert!(p.selectors_match(&alice, &here), "require: all");
        p.require.push(Country("FR".into()));
        assert!(!p.selectors_match(&alice, &here), "require: one fails");
        p.require.pop();
        p.exclude = vec![Country("FR".into())];
        assert!(p.selectors_match(&alice, &here), "exclude: none matches");
        p.exclude.push(Group("eng".into()));
        assert!(!p.selectors_match(&alice, &here), "exclude: one matches");
        let empty_include = policy("e", Allow, vec![]);
        assert!(!empty_include.selectors_match(&alice, &here));
    }

    #[test]
    fn every_decision_and_precedence() {
        let alice = user("alice@example.com", &["eng"], Some("corp"));
        let rb = bot("report-bot");
        let anon = Principal::Anonymous;
        let here = ctx("10.1.2.3", None);
        let m = |policy, decision| Outcome::Matched { policy, decision };

        // allow admits users only; service tokens are not people.
        let allow_all = vec![policy("all", Allow, vec![Everyone])];
        assert_eq!(evaluate(&allow_all, &alice, &here), m(0, Allow));
        assert_eq!(evaluate(&allow_all, &rb, &here), Outcome::NoMatch);
        assert_eq!(evaluate(&allow_all, &anon, &here), Outcome::NoMatch);

        // service_auth admits service tokens only.
        let svc = vec![policy("bots", ServiceAuth, vec![Everyone])];
        assert_eq!(evaluate(&svc, &rb, &here), m(0, ServiceAuth));
        assert_eq!(evaluate(&svc, &alice, &here), Outcome::NoMatch);
        assert_eq!(evaluate(&svc, &anon, &here), Outcome::NoMatch);

        // bypass and block apply to everyone.
        let bypass = vec![policy("public", Bypass, vec![Ip(net("10.0.0.0/8"))])];
        assert_eq!(evaluate(&bypass, &anon, &here), m(0, Bypass));
        assert_eq!(evaluate(&bypass, &rb, &here), m(0, Bypass));
        let block = vec![policy("nope", Block, vec![Everyone])];
        assert_eq!(evaluate(&block, &rb, &here), m(0, Block));
        assert_eq!(evaluate(&block, &alice, &here), m(0, Block));

        // Nothing configured: deny.
        assert_eq!(evaluate(&[], &alice, &here), Outcome::NoMatch);

        // bypass / service_auth are tried before allow / block, whatever the listed order.
        let listed = vec![
            policy("block-all", Block, vec![Everyone]),
            policy("allow-eng", Allow, vec![Group("eng".into())]),
            policy("bots", ServiceAuth, vec![ServiceToken("report-bot".into())]),
            policy("office", Bypass, vec![Ip(net("10.0.0.0/8"))]),
        ];
        assert_eq!(
            evaluate(&listed, &rb, &here),
            m(2, ServiceAuth),
            "first pass in listed order: service_auth listed before bypass"
        );
        assert_eq!(
            evaluate(&listed, &anon, &here),
            m(3, Bypass),
            "bypass is tried before block, though listed after it"
        );
        let elsewhere = ctx("192.0.2.1", None);
        assert_eq!(evaluate(&listed, &rb, &elsewhere), m(2, ServiceAuth));
        assert_eq!(
            evaluate(&listed, &alice, &elsewhere),
            m(0, Block),
            "block listed first wins over allow"
        );

        // Within the second pass, listed order decides.
        let allow_first = vec![
            policy("allow-eng", Allow, vec![Group("eng".into())]),
            policy("block-all", Block, vec![Everyone]),
        ];
        assert_eq!(evaluate(&allow_first, &alice, &here), m(0, Allow));
        assert_eq!(evaluate(&allow_first, &rb, &here), m(1, Block));

        // Within the first pass, listed order decides too.
        let first = vec![
            policy("bots", ServiceAuth, vec![AnyValidServiceToken]),
            policy("office", Bypass, vec![Everyone]),
        ];
        assert_eq!(evaluate(&first, &rb, &here), m(0, ServiceAuth));
        assert_eq!(evaluate(&first, &alice, &here), m(1, Bypass));

        // A service_auth policy whose selectors do not match falls through.
        let other = vec![
            policy("other", ServiceAuth, vec![ServiceToken("other".into())]),
            policy("block", Block, vec![Everyone]),
        ];
        assert_eq!(evaluate(&other, &rb, &here), m(1, Block));
    }
}
