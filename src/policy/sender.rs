// SPDX-License-Identifier: GPL-3.0-or-later
//! Who sent a message, as far as the policy trusts it: the one place that decides.
//!
//! The envelope sender is whatever the client wrote in MAIL FROM. When the client
//! authenticated, the SASL login is the identity: a configured sender must match the
//! login, never the envelope sender alone. Mail without a login (trusted networks,
//! sendmail(1) from cron) is known by its envelope sender, which grants something only
//! where the configuration says that sender is trusted (`envelope_senders`).

use super::address::{AddressGlobs, fold_case};
use super::facts::MessageFacts;

/// The identity a message is known by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity<'a> {
    /// The client authenticated: its SASL login.
    Login(&'a str),
    /// No login: the envelope sender, empty for the null sender.
    Envelope(&'a str),
}

/// The identity of a message: its SASL login when there is one, else its envelope
/// sender.
pub fn identity(facts: &MessageFacts) -> Identity<'_> {
    match facts.sasl_login.as_deref() {
        Some(login) if !login.is_empty() => Identity::Login(login),
        _ => Identity::Envelope(&facts.sender),
    }
}

impl Identity<'_> {
    /// The name for messages and logs: the login, the envelope sender, or `<>`.
    pub fn name(&self) -> &str {
        match self {
            Identity::Login(l) => l,
            Identity::Envelope("") => "<>",
            Identity::Envelope(s) => s,
        }
    }

    /// The key rates count a sender by, case folded ([`fold_case`], as addresses are
    /// compared everywhere): `sasl:LOGIN` or `env:ADDRESS`. The
    /// two kinds never meet, so a forged envelope sender cannot spend the budget of the
    /// user who logs in under that name.
    pub fn key(&self) -> String {
        match self {
            Identity::Login(l) => format!("sasl:{}", fold_case(l)),
            Identity::Envelope(_) => format!("env:{}", fold_case(self.name())),
        }
    }
}

/// The key a sender's confirmations (`confirm`: "send it to all of them") are
/// remembered under: the SASL login, case folded. Mail without a login has none: its
/// envelope sender, even with the client address, can be forged by anyone who shares
/// that client (a hub, a terminal server), so such a sender is asked every time.
pub fn confirm_key(sasl_login: Option<&str>) -> Option<String> {
    sasl_login
        .filter(|l| !l.is_empty())
        .map(|login| format!("sasl:{}", fold_case(login)))
}

/// Senders a rule grants something to (an exemption, posting to a restricted list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedSenders {
    /// `senders` / `allowed_senders`: globs matched against the SASL login. Mail without
    /// a login never matches them.
    pub logins: AddressGlobs,
    /// `envelope_senders` / `allowed_envelope_senders`: globs matched against the
    /// envelope sender of mail without a SASL login (safe only where Postfix
    /// guarantees that sender; see the README).
    pub envelope: AddressGlobs,
}

impl TrustedSenders {
    /// True when neither list has a pattern.
    pub fn is_empty(&self) -> bool {
        self.logins.is_empty() && self.envelope.is_empty()
    }

    /// The pattern that grants `facts`' sender, if any: one of `logins` matching the
    /// SASL login, or, for mail without a login, one of `envelope` matching the
    /// envelope sender. The null sender matches nothing.
    pub fn grants(&self, facts: &MessageFacts) -> Option<&str> {
        match identity(facts) {
            Identity::Login(login) => self.logins.first_match(login),
            Identity::Envelope(sender) => self.envelope.first_match(sender),
        }
    }

    /// Every pattern, the envelope ones marked, for display.
    pub fn describe(&self) -> Vec<String> {
        self.logins
            .patterns()
            .iter()
            .cloned()
            .chain(
                self.envelope
                    .patterns()
                    .iter()
                    .map(|p| format!("{p} (envelope)")),
            )
            .collect()
    }
}

/// Of `items` (each a restriction with its own senders, such as `[[scope]]`), the first
/// whose senders match the message's [`identity`]: the SASL login when there is one,
/// else the envelope sender. With a login, a forged MAIL FROM can never move the
/// message out of the restriction its login is named in. A login that no restriction
/// names is then matched by its envelope sender: that can only add a restriction (no
/// restriction at all is the most permissive outcome), so it keeps honest users whose
/// logins the configuration does not name inside their organisation's scope.
pub fn first_restriction<'i, T>(
    items: &'i [T],
    senders: impl Fn(&T) -> &AddressGlobs,
    facts: &MessageFacts,
) -> Option<&'i T> {
    let by = |who: &str| items.iter().find(|i| senders(i).first_match(who).is_some());
    match identity(facts) {
        Identity::Login(login) => by(login).or_else(|| {
            let envelope = facts.sender.as_str();
            (!envelope.is_empty()).then(|| by(envelope)).flatten()
        }),
        Identity::Envelope(who) => by(who),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sender: &str, login: Option<&str>) -> MessageFacts {
        MessageFacts {
            sender: sender.into(),
            sasl_login: login.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn confirmations_are_kept_by_login_only() {
        assert_eq!(confirm_key(Some("Ann")).as_deref(), Some("sasl:ann"));
        assert_eq!(confirm_key(Some("")), None);
        assert_eq!(confirm_key(None), None);
    }

    fn globs(p: &[&str]) -> AddressGlobs {
        AddressGlobs::new(p).unwrap()
    }

    fn trusted(logins: &[&str], envelope: &[&str]) -> TrustedSenders {
        TrustedSenders {
            logins: globs(logins),
            envelope: globs(envelope),
        }
    }

    #[test]
    fn the_login_is_the_identity_when_there_is_one() {
        let f = facts("bulk-notices@example.org", Some("mallory"));
        assert_eq!(identity(&f), Identity::Login("mallory"));
        assert_eq!(identity(&f).name(), "mallory");
        let f = facts("Ann@example.org", None);
        assert_eq!(identity(&f), Identity::Envelope("Ann@example.org"));
        assert_eq!(identity(&facts("", None)).name(), "<>");
        assert_eq!(
            identity(&facts("x@example.org", Some(""))),
            Identity::Envelope("x@example.org"),
            "an empty login is no login"
        );
    }

    #[test]
    fn rate_keys_keep_logins_and_envelope_senders_apart() {
        assert_eq!(
            identity(&facts("ann@example.org", Some("ANN@example.org"))).key(),
            "sasl:ann@example.org"
        );
        assert_eq!(
            identity(&facts("ANN@example.org", None)).key(),
            "env:ann@example.org"
        );
        assert_eq!(identity(&facts("", None)).key(), "env:<>");
    }

    #[test]
    fn a_forged_envelope_sender_with_another_login_is_not_trusted() {
        let t = trusted(&["bulk-notices@example.org"], &["bulk-notices@example.org"]);
        assert_eq!(
            t.grants(&facts("bulk-notices@example.org", Some("mallory"))),
            None
        );
        assert_eq!(
            t.grants(&facts(
                "bulk-notices@example.org",
                Some("BULK-notices@example.org")
            )),
            Some("bulk-notices@example.org"),
            "the login itself matches"
        );
    }

    #[test]
    fn senders_match_only_a_login_envelope_senders_only_mail_without_one() {
        let login_only = trusted(&["bulk-notices@example.org"], &[]);
        assert_eq!(
            login_only.grants(&facts("bulk-notices@example.org", None)),
            None,
            "the envelope sender alone never matches `senders`"
        );
        let both = trusted(&["svc-*"], &["cron@example.org"]);
        assert_eq!(
            both.grants(&facts("x@example.org", Some("svc-payroll"))),
            Some("svc-*")
        );
        assert_eq!(
            both.grants(&facts("CRON@example.org", None)),
            Some("cron@example.org")
        );
        assert_eq!(
            both.grants(&facts("cron@example.org", Some("ann"))),
            None,
            "with a login, envelope_senders do not apply"
        );
        let any = trusted(&["*"], &["*"]);
        assert_eq!(any.grants(&facts("", None)), None, "never the null sender");
        assert!(TrustedSenders::default().is_empty());
        assert!(!trusted(&["svc-*"], &[]).is_empty(), "logins only");
        assert!(
            !trusted(&[], &["cron@example.org"]).is_empty(),
            "envelope only"
        );
        assert_eq!(
            both.describe(),
            ["svc-*".to_owned(), "cron@example.org (envelope)".to_owned()]
        );
    }

    #[test]
    fn with_a_login_only_the_login_picks_the_restriction() {
        let scopes = [globs(&["*@trust-b.example"]), globs(&["*@trust-a.example"])];
        let pick = |f: &MessageFacts| {
            first_restriction(&scopes, |g| g, f).map(|g| g.patterns()[0].clone())
        };
        assert_eq!(
            pick(&facts("x@trust-b.example", Some("y@trust-a.example"))).as_deref(),
            Some("*@trust-a.example"),
            "a forged envelope sender does not pick the scope"
        );
        assert_eq!(
            pick(&facts("ann@trust-a.example", Some("mallory"))).as_deref(),
            Some("*@trust-a.example"),
            "a login no scope names is scoped by its envelope sender (that only restricts)"
        );
        assert_eq!(pick(&facts("x@outside.example", Some("mallory"))), None);
        assert_eq!(
            pick(&facts("x@trust-b.example", Some("Y@TRUST-A.example"))).as_deref(),
            Some("*@trust-a.example"),
            "logins match case-insensitively"
        );
        assert_eq!(
            pick(&facts("ann@trust-a.example", None)).as_deref(),
            Some("*@trust-a.example"),
            "without a login the envelope sender picks"
        );
        assert_eq!(
            pick(&facts("ann@trust-a.example", Some(""))).as_deref(),
            Some("*@trust-a.example"),
            "an empty login is no login"
        );
        assert_eq!(pick(&facts("", None)), None);
        assert_eq!(pick(&facts("x@outside.example", None)), None);
    }

    #[test]
    fn a_forged_envelope_sender_cannot_pick_a_more_permissive_scope() {
        // The first scope is the permissive one; mallory (a bare login) is named only
        // in the strict second one and writes the permissive scope's envelope sender.
        let scopes = [globs(&["*@trust-a.example"]), globs(&["mallory", "eve"])];
        let pick = |f: &MessageFacts| {
            first_restriction(&scopes, |g| g, f).map(|g| g.patterns()[0].clone())
        };
        assert_eq!(
            pick(&facts("boss@trust-a.example", Some("mallory"))).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            pick(&facts("boss@trust-a.example", Some("eve"))).as_deref(),
            Some("mallory"),
            "any pattern of the scope"
        );
        assert_eq!(
            pick(&facts("mallory", None)).as_deref(),
            Some("mallory"),
            "without a login the envelope sender is matched the same way"
        );
    }
}
