// SPDX-License-Identifier: GPL-3.0-or-later
//! The facts about one message that the policy core decides on.

use super::address::AddressForm;
use indexmap::IndexSet;
use std::collections::HashSet;
use std::sync::Arc;

/// Envelope recipients in their canonical form ([`AddressForm::canonical`]), without
/// duplicates, in arrival order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecipientSet {
    /// Insertion-ordered and hashed: one allocation per recipient.
    set: IndexSet<String>,
    /// How addresses are completed and compared.
    form: AddressForm,
}

impl RecipientSet {
    /// An empty set that knows neither `$myorigin` nor a delimiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set whose addresses are completed and compared as `form` says.
    pub fn with_form(form: AddressForm) -> Self {
        RecipientSet {
            set: IndexSet::new(),
            form,
        }
    }

    /// How this set completes and compares addresses.
    pub fn form(&self) -> &AddressForm {
        &self.form
    }

    /// Adds one raw address (`<a@B.org>`, `a@b.org`, `"a"@b.org`, a bare name) in its
    /// canonical form; returns false for a duplicate or an empty address.
    pub fn add(&mut self, raw: &str) -> bool {
        let addr = self.form.canonical(raw);
        !addr.is_empty() && self.set.insert(addr)
    }

    /// The number of distinct recipients.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when there is no recipient.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The recipients in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.set.iter().map(String::as_str)
    }
}

impl<S: AsRef<str>> FromIterator<S> for RecipientSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut set = RecipientSet::new();
        for a in iter {
            set.add(a.as_ref());
        }
        set
    }
}

/// What the message headers show (parsed by the message adapter).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    /// Distinct addresses in every To and Cc header, groups included, normalised.
    pub visible: RecipientSet,
    /// The first From address.
    pub from: Option<String>,
    /// The decoded Subject.
    pub subject: Option<String>,
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// In-Reply-To ids.
    pub in_reply_to: Vec<String>,
    /// References ids, oldest first.
    pub references: Vec<String>,
    /// True when the headers were larger than the milter keeps, so the facts above
    /// describe only the first part of them.
    pub truncated: bool,
    /// Sent by a program or distributed by a list (`Auto-Submitted`, `Precedence:
    /// bulk|list|junk`, `List-Id`): its sender is never sent a notice.
    pub automated: bool,
}

impl HeaderFacts {
    /// The envelope recipients that a To or Cc header names, in arrival order. Whoever
    /// such a recipient reaches (every member of a list named in To) sees the address
    /// the message was sent to. Both sides compare by the recipients' form
    /// ([`AddressForm::same_key`]: `$myorigin` for a bare name, case folded, without
    /// an address extension), as the directory resolves them.
    pub fn named<'r>(&self, recipients: &'r RecipientSet) -> Vec<&'r str> {
        if self.visible.is_empty() {
            return Vec::new();
        }
        let form = recipients.form();
        let shown: HashSet<String> = self.visible.iter().map(|v| form.same_key(v)).collect();
        recipients
            .iter()
            .filter(|r| shown.contains(&form.same_key(r)))
            .collect()
    }
}

/// One list among the envelope recipients, as the directory expanded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFacts {
    /// The list address.
    pub address: Arc<str>,
    /// Distinct final mailboxes it reaches.
    pub size: u64,
    /// Of those, outside the internal domains.
    pub external: u64,
    /// Lists nested below it.
    pub nested_lists: u32,
    /// Cycles found below it.
    pub cycles: usize,
    /// Mailboxes per domain, largest first.
    pub domains: Arc<[(Arc<str>, u64)]>,
    /// The last accepted size, when the list has grown past the drift limits since.
    pub drift_from: Option<u64>,
    /// Members that could not be counted (dangling, empty, failed dynamic lists).
    pub unknown: u64,
    /// Why the first of them could not be counted.
    pub unknown_reason: Option<String>,
    /// True when an envelope recipient that reaches this list is named in To or Cc, so
    /// its members see the address they were sent to.
    pub named: bool,
}

/// The real audience: final mailboxes after list and alias expansion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AudienceFacts {
    /// Distinct final mailboxes over all recipients.
    pub total: u64,
    /// Of those, outside the internal domains.
    pub external: u64,
    /// Lists among the recipients, largest first.
    pub lists: Vec<ListFacts>,
    /// Pipes, files and other non-mailbox targets reached.
    pub non_mailbox: u64,
    /// True when the count is a lower bound (nesting deeper than the limit, or the
    /// audience cap reached).
    pub lower_bound: bool,
    /// Members of the lists that could not be counted at all.
    pub unknown: u64,
    /// Set when the directory cannot count some recipient now (a source with no usable
    /// snapshot): why.
    pub unavailable: Option<String>,
    /// Of `total`, the distinct mailboxes reached through envelope recipients named in
    /// To or Cc ([`HeaderFacts::named`]); the rest is reached through addresses no
    /// header shows (Bcc, envelope only).
    pub seen: u64,
}

/// A copy that the root worker made of a held message for a reviewer's "release to
/// chosen recipients", as the milter found it in the quarantine store (its mark is a
/// secret token only the store and the copy know). A copy is always held: the worker
/// releases it once it has checked it in Postfix's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleasedCopy {
    /// A copy for a running request.
    Accepted {
        /// The request's id.
        request: i64,
    },
    /// A genuine copy of a request that is over: held for an admin. Why.
    Late {
        /// Why it is not for the worker to release.
        why: String,
    },
}

/// Everything known about one message when it is decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageFacts {
    /// Postfix queue id (macro `i`), when Postfix sent it.
    pub queue_id: Option<String>,
    /// Envelope sender, normalised; empty for the null sender.
    pub sender: String,
    /// SASL login name (macro `{auth_authen}`).
    pub sasl_login: Option<String>,
    /// Client IP address or socket name.
    pub client: Option<String>,
    /// Envelope recipients.
    pub recipients: RecipientSet,
    /// Header facts.
    pub headers: HeaderFacts,
    /// The expanded audience; `None` when no directory is configured, and the envelope
    /// recipients are the audience.
    pub audience: Option<AudienceFacts>,
    /// Set when the message is a copy made for a release to chosen recipients.
    pub released: Option<ReleasedCopy>,
}

/// A list a sender confirmed posting to, and its size then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfirmedList {
    /// The list address, as the directory names it.
    pub address: String,
    /// How many people it reached when the sender confirmed.
    pub size: u64,
}

impl ConfirmedList {
    /// True when this confirmation still stands for `list`: the same address, grown by
    /// at most a quarter since (a list that grew more is a new question).
    pub fn covers(&self, list: &ListFacts) -> bool {
        *self.address == *list.address && list.size <= self.size.saturating_add(self.size / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_set_normalises_and_dedups() {
        let mut set = RecipientSet::new();
        assert!(set.is_empty());
        assert!(set.add("<a@Example.org>"));
        assert!(!set.is_empty());
        assert!(!set.add("a@example.org"));
        assert!(!set.add("<a@EXAMPLE.ORG>"));
        assert!(set.add("A@example.org"), "local parts keep their case");
        assert!(!set.add("<>"));
        assert!(!set.add("   "));
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            ["a@example.org", "A@example.org"]
        );
    }

    #[test]
    fn named_recipients_are_those_a_to_or_cc_header_shows() {
        let rcpts: RecipientSet = [
            "Dept@corp.example",
            "bcc-list@corp.example",
            "ann@corp.example",
        ]
        .into_iter()
        .collect();
        let mut headers = HeaderFacts::default();
        assert!(headers.named(&rcpts).is_empty());
        headers.visible.add("dept@CORP.example");
        headers.visible.add("ann@corp.example");
        headers.visible.add("someone-else@corp.example");
        assert_eq!(
            headers.named(&rcpts),
            ["Dept@corp.example", "ann@corp.example"],
            "case-insensitive, in arrival order, Bcc'd list left out"
        );
    }

    #[test]
    fn named_compares_through_the_delimiter_and_the_case_fold() {
        let form = AddressForm {
            myorigin: "corp.example".into(),
            delimiter: crate::policy::address::RecipientDelimiter::new("+"),
        };
        let mut rcpts = RecipientSet::with_form(form);
        for r in [
            "<dept+x@corp.example>",
            "<straße@corp.example>",
            "<board>",
            "<bcc@corp.example>",
        ] {
            rcpts.add(r);
        }
        let mut headers = HeaderFacts::default();
        for v in [
            "dept@corp.example",
            "STRASSE@corp.example",
            "board@corp.example",
        ] {
            headers.visible.add(v);
        }
        assert_eq!(
            headers.named(&rcpts),
            [
                "dept+x@corp.example",
                "straße@corp.example",
                "board@corp.example"
            ]
        );
    }

    #[test]
    fn recipient_set_from_iter() {
        let set: RecipientSet = ["x@a.org", "<x@A.org>", "y@a.org"].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(!set.is_empty());
    }
}
