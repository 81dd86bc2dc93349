// SPDX-License-Identifier: GPL-3.0-or-later
//! `/s/{token}`: the page a held message's sender reaches from the notice about it
//! (see `crate::link`), written for the people who send mail, not for mail admins.
//!
//! No login: the signed link is the capability, bound to one hold of one queue id, the
//! sender it was mailed to, one action and an expiry. A GET only shows what the message
//! is and who it would reach, with one button (link scanners follow GETs). The POST
//! needs, besides the desk's cross-origin check and body limit, the link again and a
//! form token bound to the link (so it comes from a page the desk served), and acts
//! through the store's one request path, spending the link's nonce in the same
//! transaction: withdraw files a discard, send (only for a message held for the
//! sender's confirmation) files a release, ask records the sender's plea for the
//! admins. The worker carries requests out; nothing here touches the queue.

use super::{Fields, Shown, group, render};
use crate::config::OnExpiry;
use crate::desk::{Desk, Peer, auth};
use crate::link::{self, Link, LinkAction, LinkError};
use crate::policy::ConfirmedList;
use crate::quarantine::{
    Address, NewRequest, Plea, QueueId, Record, Request, RequestAction, State, StoreError,
    SubmitError, Via, needs_admin,
};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::Arc;
use tracing::{info, warn};

/// The longest plea a sender may write (characters); longer text is cut.
pub const MAX_PLEA_CHARS: usize = 2000;

/// The form field carrying the form token bound to the link.
const FORM_FIELD: &str = "form";

/// The form field of the sender's words (ask).
const WORDS_FIELD: &str = "why";

/// What the sender's message is, as their page shows it.
struct Facts {
    subject: Shown,
    held_at: String,
    recipients: Vec<Shown>,
    audience: String,
    lists: Vec<(Shown, String)>,
    visible: usize,
}

impl Facts {
    fn of(r: &Record) -> Facts {
        let m = &r.message;
        Facts {
            subject: Shown::capped(m.subject.as_deref().unwrap_or(""), text::MAX_SUBJECT_CHARS),
            held_at: text::plain_utc(m.held_at),
            recipients: m.recipients.iter().map(|a| Shown::new(a)).collect(),
            audience: people(m.audience),
            lists: m
                .lists
                .iter()
                .map(|l| (Shown::new(&l.address), group(l.size)))
                .collect(),
            visible: m.visible.len(),
        }
    }
}

/// The sender's page: the offer of one action, what became of the message, the result
/// of the action, or a refusal.
#[derive(Template)]
#[template(path = "sender.html", config = "src/desk/askama.toml")]
struct SenderPage {
    base: String,
    /// Where the form posts: this page's own address.
    post_to: String,
    heading: String,
    /// The sentence under the heading.
    lead: Option<String>,
    /// What the message is (none on a refusal).
    facts: Option<Facts>,
    /// The link's action: `withdraw`, `ask`, `send`.
    action: &'static str,
    /// The form token, when the page offers its one button.
    form: Option<String>,
    /// The button's words.
    button: String,
    /// A note under the facts (why there is nothing to press, who reviews it).
    note: Option<String>,
    /// Whether this page refuses the link or the request.
    refused: bool,
    /// The most a plea may say.
    max_words: usize,
}

impl SenderPage {
    fn new(desk: &Desk, token: &str, action: LinkAction, heading: String) -> SenderPage {
        SenderPage {
            base: desk.base(),
            post_to: link::sender_link_url(&desk.base(), token),
            heading,
            lead: None,
            facts: None,
            action: action.as_str(),
            form: None,
            button: String::new(),
            note: None,
            refused: false,
            max_words: MAX_PLEA_CHARS,
        }
    }
}

/// What the store holds about a link's message.
struct Found {
    record: Record,
    /// The open request for it, if any.
    open: Option<Request>,
    /// The last request carried out, if any.
    last_done: Option<Request>,
    plea: Option<Plea>,
}

/// "4,000 people" / "1 person".
fn people(n: u64) -> String {
    if n == 1 {
        "1 person".to_owned()
    } else {
        format!("{} people", group(n))
    }
}

impl Desk {
    /// The form token of the sender page of link `token`: only the desk can make it.
    fn sender_form_token(&self, token: &str) -> String {
        auth::sign(&self.key, &["sender-form", token])
    }

    /// A plain page refusing a sender link, logged with the client's address and the
    /// reason (never the link).
    fn refuse_sender(
        &self,
        headers: &HeaderMap,
        peer: Peer,
        status: StatusCode,
        why: &str,
    ) -> Response {
        warn!(
            client = %self.client(headers, peer),
            status = status.as_u16(),
            "review desk: a sender link refused: {}",
            text::neutralize(why)
        );
        self.sender_refusal(status, why)
    }

    /// A plain page saying why nothing was done, with `status`.
    fn sender_refusal(&self, status: StatusCode, why: &str) -> Response {
        let mut page = SenderPage::new(
            self,
            "",
            LinkAction::Withdraw,
            "Nothing was done".to_owned(),
        );
        page.lead = Some(why.to_owned());
        page.action = "";
        page.refused = true;
        let mut response = render(&page);
        *response.status_mut() = status;
        response
    }

    /// The sender link `token` with what the store holds about its message, or the
    /// page refusing it: not a sender link (403), expired (410), for an earlier hold of
    /// the queue id (410), mailed to someone other than the message's sender (403).
    async fn sender_link(
        self: &Arc<Self>,
        headers: &HeaderMap,
        peer: Peer,
        token: &str,
    ) -> Result<(Link, Found), Response> {
        let refuse = |status, why: &str| self.refuse_sender(headers, peer, status, why);
        let link = match link::verify(&self.key, link::Audience::Sender, token, self.now()) {
            Ok(link) => link,
            Err(LinkError::Expired(link)) => {
                return Err(refuse(
                    StatusCode::GONE,
                    &format!(
                        "This link expired at {}: nothing was done. If your message still \
                         needs something, answer the mail that brought you here.",
                        text::plain_utc(link.expires)
                    ),
                ));
            }
            Err(_) => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "This link is not valid (it was changed, or it is not from this mail \
                     system): nothing was done.",
                ));
            }
        };
        let Ok(id) = QueueId::parse(&link.queue_id) else {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This link names no message: nothing was done.",
            ));
        };
        // The record of the relay the link was signed for (none: this relay's).
        let at = Address::on(link.relay.as_deref(), id);
        let found = self
            .store(move |i| {
                let record = i.record(&at)?;
                let requests = i.requests(record.id)?;
                let plea = i.plea(record.id)?;
                Ok::<_, StoreError>(Found {
                    open: requests.iter().find(|q| q.state.is_open()).cloned(),
                    last_done: requests
                        .iter()
                        .rev()
                        .find(|q| q.state == crate::quarantine::RequestState::Done)
                        .cloned(),
                    record,
                    plea,
                })
            })
            .await?;
        let found = match found {
            Ok(f) => f,
            Err(StoreError::NotFound(_)) => {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    "There is no record of this message any more: nothing was done.",
                ));
            }
            Err(e) => {
                tracing::error!(
                    "review desk: quarantine store: {}",
                    text::neutralize(&e.to_string())
                );
                return Err(self.sender_refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on our side: nothing was done. Please try again \
                     later.",
                ));
            }
        };
        let m = &found.record.message;
        if m.held_at != link.held_at {
            return Err(refuse(
                StatusCode::GONE,
                "This link is for an earlier message: nothing was done.",
            ));
        }
        if m.sender.is_empty() || m.sender.to_lowercase() != link.to.to_lowercase() {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "This link is not for this message: nothing was done.",
            ));
        }
        Ok((link, found))
    }

    /// What became of a message no longer held, in the sender's words.
    fn what_became(&self, f: &Found) -> String {
        let r = &f.record;
        let at = text::plain_utc(r.state_at);
        let by_sender = f.last_done.as_ref().is_some_and(|q| q.via == Via::Sender);
        match r.state {
            State::Held => "Your message is still waiting.".to_owned(),
            State::Released if by_sender => {
                format!("You confirmed your message; it was sent at {at}.")
            }
            State::Released => format!("Your message was released and sent at {at}."),
            State::Discarded if by_sender => {
                format!("You withdrew your message at {at}; nobody received it.")
            }
            State::Discarded => {
                format!("Your message was not sent: it was discarded at {at}; nobody received it.")
            }
            State::Expired if r.message.confirm => format!(
                "You did not answer in time, so your message was discarded at {at}; nobody \
                 received it."
            ),
            State::Expired => match self.quarantine.on_expiry {
                OnExpiry::Release => {
                    format!("Nobody decided in time, so your message was sent at {at}.")
                }
                OnExpiry::NotifySender | OnExpiry::Keep => format!(
                    "Nobody decided in time, so your message was discarded at {at}; nobody \
                     received it."
                ),
            },
        }
    }

    /// Why a held message offers the link's action no button, if so.
    fn nothing_to_press(&self, link: &Link, f: &Found) -> Option<String> {
        if let Some(q) = &f.open {
            return Some(match (q.via, &q.action) {
                (Via::Sender, RequestAction::Discard { .. }) => {
                    "You withdrew this message; it is being removed. Nobody will receive it."
                        .to_owned()
                }
                (Via::Sender, _) => "You confirmed this message; it is on its way.".to_owned(),
                _ => "An administrator is acting on this message now; you will be told by \
                      mail what happens to it."
                    .to_owned(),
            });
        }
        match link.action {
            LinkAction::Ask => f.plea.as_ref().map(|p| {
                format!(
                    "You asked for release at {}; the administrators will tell you by mail \
                     what they decide.",
                    text::plain_utc(p.at)
                )
            }),
            // Only a hold that asks the sender alone: never one an admin must judge
            // or has taken over (extended).
            LinkAction::Send
                if !f.record.message.confirm
                    || needs_admin(&f.record)
                    || f.record.hold_until.is_some() =>
            {
                Some(format!(
                    "An administrator reviews this message (by {}); there is nothing for you \
                 to confirm. You will be told by mail what they decide.",
                    self.review_by(&f.record)
                ))
            }
            _ => None,
        }
    }

    /// When an administrator should have reviewed a hold.
    fn review_by(&self, r: &Record) -> String {
        text::plain_utc(
            r.message
                .held_at
                .saturating_add(self.quarantine.review_within.as_secs()),
        )
    }

    /// The page of a link whose message is still held, offering the link's action
    /// unless there is nothing to press.
    fn sender_offer(&self, token: &str, link: &Link, f: &Found) -> SenderPage {
        let r = &f.record;
        let m = &r.message;
        let n = people(m.audience);
        let heading = match link.action {
            LinkAction::Withdraw => "Withdraw your message?".to_owned(),
            LinkAction::Ask => "Ask for your message to be sent".to_owned(),
            _ if m.confirm => format!("Send your message to all {n}?"),
            _ => "Your message is waiting for review".to_owned(),
        };
        let mut page = SenderPage::new(self, token, link.action, heading);
        let through = match m.lists.first() {
            Some(l) => format!(" through {}", text::neutralize(&l.address)),
            None => String::new(),
        };
        let visible = m.visible.len();
        page.lead = Some(format!(
            "Your message would reach {n}{through}, though you could see {visible} address{} \
             in To and Cc. It was stopped before anyone received it, so that it can be \
             checked first.",
            if visible == 1 { "" } else { "es" }
        ));
        page.facts = Some(Facts::of(r));
        page.note = Some(if m.confirm {
            format!(
                "Nothing goes out until you decide. If you do not answer by {}, it is \
                 discarded and you are told by mail.",
                text::plain_utc(
                    m.held_at
                        .saturating_add(self.quarantine.confirm_within.as_secs())
                )
            )
        } else {
            format!(
                "An administrator reviews it by {}; you will be told by mail what they \
                 decide.",
                self.review_by(r)
            )
        });
        if let Some(why) = self.nothing_to_press(link, f) {
            page.note = Some(why);
            return page;
        }
        page.button = match link.action {
            LinkAction::Withdraw => "Withdraw my message".to_owned(),
            LinkAction::Ask => "Ask for release".to_owned(),
            _ => format!("Send it to all {n}"),
        };
        page.form = Some(self.sender_form_token(token));
        page
    }
}

/// `GET /s/{token}`: what the message is, and one button for the link's action.
/// Changes nothing.
pub async fn show(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(token): UrlPath<String>,
) -> Response {
    let (link, found) = match desk.sender_link(&headers, peer, &token).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if found.record.state != State::Held {
        let mut page = SenderPage::new(
            &desk,
            &token,
            link.action,
            "Your message is no longer waiting".to_owned(),
        );
        page.lead = Some(desk.what_became(&found));
        page.facts = Some(Facts::of(&found.record));
        page.note = Some("There is nothing left to do here.".to_owned());
        return render(&page);
    }
    render(&desk.sender_offer(&token, &link, &found))
}

/// `POST /s/{token}`: the link's action, once.
pub async fn act(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let (link, found) = match desk.sender_link(&headers, peer, &token).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sent = fields.get(FORM_FIELD).unwrap_or("");
    if !auth::same_secret(sent, &desk.sender_form_token(&token)) {
        return desk.refuse_sender(
            &headers,
            peer,
            StatusCode::FORBIDDEN,
            "This form did not come from the page of your link: nothing was done. Open the \
             link from your mail again and press the button there.",
        );
    }
    let conflict = |why: String| desk.sender_refusal(StatusCode::CONFLICT, &why);
    if found.record.state != State::Held {
        return conflict(format!("{} Nothing was changed.", desk.what_became(&found)));
    }
    if let Some(why) = desk.nothing_to_press(&link, &found) {
        return conflict(format!("{why} Nothing was changed."));
    }
    let r = &found.record;
    let m = &r.message;
    let who = text::neutralize(&m.sender).into_owned();
    let now = desk.now();
    let id = m.queue_id.clone();
    // The relay of the record the link was checked against.
    let relay = r.relay.clone();
    let nonce = link.nonce.clone();
    let expires = link.expires;
    let n = people(m.audience);
    let request = |action, comment: String| NewRequest {
        queue_id: id.clone(),
        action,
        who: who.clone(),
        via: Via::Sender,
        remote: Some(desk.client(&headers, peer)),
        comment,
        at: now,
    };
    let (done, heading, lead) = match link.action {
        LinkAction::Withdraw => {
            let request = request(
                RequestAction::Discard {
                    notify_sender: false,
                },
                "withdrawn by the sender".to_owned(),
            );
            let done = desk
                .store(move |i| {
                    i.submit_link(relay.as_deref(), &request, &nonce, expires)
                        .map(|_| ())
                })
                .await;
            (
                done,
                "Your message was withdrawn",
                "Your message was withdrawn; nobody will receive it.".to_owned(),
            )
        }
        LinkAction::Ask => {
            let Some(words) = fields
                .0
                .iter()
                .find(|(k, v)| k == WORDS_FIELD && !v.trim().is_empty())
                .map(|(_, v)| text::cap(v, MAX_PLEA_CHARS).into_owned())
            else {
                return desk.sender_refusal(
                    StatusCode::BAD_REQUEST,
                    "Please say why the message must go out: nothing was done. Go back, \
                     write a few words and press the button again.",
                );
            };
            let held_id = r.id;
            let who = who.clone();
            let done = desk
                .store(move |i| i.sender_asks(held_id, &words, &who, &nonce, expires, now))
                .await;
            (
                done,
                "Your request was passed on",
                "Your request was passed to the administrators; you will be told by mail \
                 what they decide."
                    .to_owned(),
            )
        }
        LinkAction::Send => {
            let request = request(
                RequestAction::Release,
                format!("the sender confirmed: send to all {}", group(m.audience)),
            );
            let done = desk
                .store(move |i| {
                    i.submit_link(relay.as_deref(), &request, &nonce, expires)
                        .map(|_| ())
                })
                .await;
            (
                done,
                "Your message is on its way",
                format!("Your message is on its way to {n}."),
            )
        }
        LinkAction::Release | LinkAction::Discard => {
            return desk.refuse_sender(
                &headers,
                peer,
                StatusCode::FORBIDDEN,
                "This link is not valid: nothing was done.",
            );
        }
    };
    match done {
        Ok(Ok(())) => {}
        Ok(Err(SubmitError::Conflict(why))) => {
            return conflict(format!(
                "{}: nothing was changed.",
                capitalised(&text::neutralize(&why))
            ));
        }
        Ok(Err(SubmitError::Invalid(why))) => {
            return desk.sender_refusal(
                StatusCode::BAD_REQUEST,
                &format!(
                    "{}: nothing was done.",
                    capitalised(&text::neutralize(&why))
                ),
            );
        }
        Ok(Err(SubmitError::NotFound(_) | SubmitError::Store(StoreError::NotFound(_)))) => {
            return desk.sender_refusal(
                StatusCode::NOT_FOUND,
                "There is no record of this message any more: nothing was done.",
            );
        }
        Ok(Err(SubmitError::Store(e))) => {
            tracing::error!(
                "review desk: quarantine store: {}",
                text::neutralize(&e.to_string())
            );
            return desk.sender_refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side: nothing was done. Please try again later.",
            );
        }
        Err(resp) => return resp,
    }
    info!(
        queue_id = %m.queue_id,
        relay = %text::neutralize(r.relay.as_deref().unwrap_or("-")),
        sender = %who,
        action = link.action.as_str(),
        client = %desk.client(&headers, peer),
        "review desk: the sender acted through their link"
    );
    if link.action == LinkAction::Send {
        desk.remember_confirmation(r, now).await;
    }
    let mut page = SenderPage::new(&desk, &token, link.action, heading.to_owned());
    page.lead = Some(lead);
    page.facts = Some(Facts::of(r));
    render(&page)
}

impl Desk {
    /// Remembers that the sender of `r` confirmed its lists (when the relay remembers
    /// confirmations and the record says under what): a failure is logged, and the
    /// send stands.
    async fn remember_confirmation(self: &Arc<Self>, r: &Record, now: u64) {
        let remember = self.quarantine.confirm_remember.as_secs();
        let Some(key) = r.message.confirm_key.clone() else {
            return;
        };
        let lists: Vec<ConfirmedList> = r
            .message
            .lists
            .iter()
            .map(|l| ConfirmedList {
                address: l.address.clone(),
                size: l.size,
            })
            .collect();
        if remember == 0 || lists.is_empty() {
            return;
        }
        let until = now.saturating_add(remember);
        let queue_id = r.message.queue_id.clone();
        match self
            .store(move |i| i.remember_confirmed(&key, &lists, until, now))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(
                queue_id = %queue_id,
                "review desk: the sender's confirmation was not remembered: {}",
                text::neutralize(&e.to_string())
            ),
            Err(_) => warn!(
                queue_id = %queue_id,
                "review desk: the sender's confirmation was not remembered"
            ),
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
