// SPDX-License-Identifier: GPL-3.0-or-later
//! `/`: the held list, with server-side filters, sort, paging and counts.

use super::{Fields, Head, Shown, group, render, shown_lines};
use crate::desk::users::Role;
use crate::desk::{Desk, Peer};
use crate::quarantine::{
    Page, Plea, Query, Record, Request as ActionRequest, Row, Sort, State, Via, needs_admin,
};
use crate::text;
use askama::Template;
use axum::Extension;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use std::sync::Arc;

/// Rows per page of the held list.
const PER_PAGE: u64 = 50;

/// One row of the held list.
struct ListRow {
    queue_id: String,
    /// Its address as a URL path segment (the queue id; `RELAY:QUEUEID` in a fleet).
    address: String,
    /// The relay that holds it (a fleet-wide store).
    relay: Option<Shown>,
    state: &'static str,
    foreign: bool,
    admin_only: bool,
    age: String,
    review_left: String,
    expiry_left: String,
    sender: Shown,
    sasl: Option<Shown>,
    audience: String,
    counted: &'static str,
    largest: Option<(Shown, String)>,
    rule: Shown,
    subject: Shown,
    request: Option<(&'static str, &'static str)>,
    /// The request was filed by the sender, through their link.
    by_sender: bool,
    /// Held for the sender's confirmation, and still held.
    waiting: bool,
}

/// A held message whose sender asked for release, with their words: shown first.
struct PleaRow {
    queue_id: String,
    /// Its address as a URL path segment.
    address: String,
    sender: Shown,
    subject: Shown,
    audience: String,
    at: String,
    words: Vec<Shown>,
}

/// The most pleas the held list shows above the table.
const MAX_PLEAS: u64 = 20;

#[derive(Template)]
#[template(path = "list.html", config = "src/desk/askama.toml")]
struct ListPage {
    head: Option<Head>,
    base: String,
    filter: Filter,
    rows: Vec<ListRow>,
    total: u64,
    by_state: Vec<(&'static str, u64, String)>,
    by_rule: Vec<(Shown, u64, String)>,
    page: u64,
    pages: u64,
    prev: Option<String>,
    next: Option<String>,
    can_act: bool,
    pleas: Vec<PleaRow>,
    /// The store is a fleet's: the relay column and filter are shown.
    fleet: bool,
}

/// The list's filters as the form shows them back.
#[derive(Clone, Debug, Default)]
pub(super) struct Filter {
    state: String,
    rule: Shown,
    sender: Shown,
    list: Shown,
    relay: Shown,
    min_audience: String,
    older_than: String,
    sort: &'static str,
    desc: bool,
    state_options: Vec<Opt>,
    sort_options: Vec<Opt>,
    /// The filter as query-string fields (for links and the bulk form).
    fields: Vec<(&'static str, String)>,
}

/// One option of a select.
#[derive(Clone, Debug, Default)]
struct Opt {
    value: &'static str,
    selected: bool,
}

fn options(values: &[&'static str], chosen: &str) -> Vec<Opt> {
    values
        .iter()
        .map(|v| Opt {
            value: v,
            selected: *v == chosen,
        })
        .collect()
}

/// The query of the list's filter fields; an unusable value is a message for a 400.
pub(super) fn query_of(f: &Fields, now: u64) -> Result<(Query, Filter), String> {
    let mut q = Query::default();
    let mut filter = Filter::default();
    let mut fields: Vec<(&'static str, String)> = Vec::new();
    let state = f.get("state").unwrap_or("held");
    q.state =
        match state {
            "any" => None,
            s => Some(s.parse::<State>().map_err(|_| {
                "state must be held, released, discarded, expired or any".to_owned()
            })?),
        };
    filter.state = state.to_owned();
    fields.push(("state", state.to_owned()));
    if let Some(rule) = f.get("rule") {
        q.rule = Some(rule.to_owned());
        filter.rule = Shown::new(rule);
        fields.push(("rule", rule.to_owned()));
    }
    if let Some(sender) = f.get("sender") {
        q.sender = Some(sender.to_owned());
        filter.sender = Shown::new(sender);
        fields.push(("sender", sender.to_owned()));
    }
    if let Some(list) = f.get("list") {
        q.list = Some(list.to_owned());
        filter.list = Shown::new(list);
        fields.push(("list", list.to_owned()));
    }
    if let Some(relay) = f.get("relay") {
        q.relay = Some(relay.to_owned());
        filter.relay = Shown::new(relay);
        fields.push(("relay", relay.to_owned()));
    }
    if let Some(min) = f.get("min_audience") {
        q.min_audience = Some(
            min.parse()
                .map_err(|_| "min_audience must be a whole number".to_owned())?,
        );
        filter.min_audience = min.to_owned();
        fields.push(("min_audience", min.to_owned()));
    }
    if let Some(older) = f.get("older_than") {
        let d = humantime::parse_duration(older)
            .map_err(|_| "older_than must be a duration such as 30m or 2h".to_owned())?;
        q.held_before = Some(now.saturating_sub(d.as_secs()));
        filter.older_than = older.to_owned();
        fields.push(("older_than", older.to_owned()));
    }
    (q.sort, filter.sort) = match f.get("sort").unwrap_or("held-at") {
        "held-at" => (Sort::HeldAt, "held-at"),
        "audience" => (Sort::Audience, "audience"),
        "sender" => (Sort::Sender, "sender"),
        _ => return Err("sort must be held-at, audience or sender".into()),
    };
    fields.push(("sort", filter.sort.to_owned()));
    q.descending = f.get("desc").is_some_and(|v| v == "1" || v == "on");
    filter.desc = q.descending;
    if q.descending {
        fields.push(("desc", "1".into()));
    }
    filter.fields = fields;
    filter.state_options = options(&["held", "released", "discarded", "expired", "any"], state);
    filter.sort_options = options(&["held-at", "audience", "sender"], filter.sort);
    Ok((q, filter))
}

fn query_string(fields: &[(&'static str, String)], extra: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    for (k, v) in extra {
        s.append_pair(k, v);
    }
    s.finish()
}

fn request_summary(r: &ActionRequest) -> (&'static str, &'static str) {
    (r.action.name(), r.state.as_str())
}

fn plea_row(r: &Record, p: &Plea) -> PleaRow {
    let m = &r.message;
    PleaRow {
        queue_id: m.queue_id.as_str().to_owned(),
        address: r.address().path_segment(),
        sender: Shown::capped(if m.sender.is_empty() { "<>" } else { &m.sender }, 120),
        subject: Shown::capped(m.subject.as_deref().unwrap_or(""), text::MAX_SUBJECT_CHARS),
        audience: group(m.audience),
        at: text::utc_seconds(p.at),
        words: shown_lines(&p.words),
    }
}

fn list_row(desk: &Desk, row: &Row, now: u64) -> ListRow {
    let r = &row.record;
    let m = &r.message;
    let (review_left, expiry_left) = desk.deadlines(r, now);
    ListRow {
        queue_id: m.queue_id.as_str().to_owned(),
        address: r.address().path_segment(),
        relay: r.relay.as_deref().map(Shown::new),
        state: r.state.as_str(),
        foreign: r.foreign,
        admin_only: needs_admin(r),
        age: crate::quarantine::age(r.held_for(now)),
        review_left,
        expiry_left,
        sender: Shown::capped(if m.sender.is_empty() { "<>" } else { &m.sender }, 120),
        sasl: m.sasl_login.as_deref().map(|s| Shown::capped(s, 120)),
        audience: group(m.audience),
        counted: if m.lists.is_empty() {
            "envelope"
        } else {
            "lists"
        },
        largest: m
            .lists
            .iter()
            .max_by_key(|l| l.size)
            .map(|l| (Shown::capped(&l.address, 120), group(l.size))),
        rule: Shown::new(m.rules.first().map(|r| r.rule.as_str()).unwrap_or("-")),
        subject: Shown::capped(m.subject.as_deref().unwrap_or(""), text::MAX_SUBJECT_CHARS),
        request: row.request.as_ref().map(request_summary),
        by_sender: row.request.as_ref().is_some_and(|q| q.via == Via::Sender),
        waiting: r.state == State::Held && m.confirm,
    }
}

/// `GET /`: the held list.
pub async fn list(
    AxState(desk): AxState<Arc<Desk>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let who = match desk.reader(&headers, peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let now = desk.now();
    let fields = Fields::of_uri(&uri);
    let (mut q, filter) = match query_of(&fields, now) {
        Ok(x) => x,
        Err(e) => return desk.refuse(Some(&who), StatusCode::BAD_REQUEST, &e),
    };
    let page_no = fields
        .get("page")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    q.limit = PER_PAGE;
    q.offset = (page_no - 1).saturating_mul(PER_PAGE);
    let found = desk
        .store(move |i| {
            let page = i.page(&q)?;
            let mut pleas = Vec::new();
            for at in i.pleading(MAX_PLEAS)? {
                let record = i.record(&at)?;
                if let Some(plea) = i.plea(record.id)? {
                    pleas.push(plea_row(&record, &plea));
                }
            }
            Ok::<_, crate::quarantine::StoreError>((page, pleas, i.fleet()))
        })
        .await;
    let (page, pleas, fleet): (Page, Vec<PleaRow>, bool) = match found {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return desk.store_failed(Some(&who), e),
        Err(r) => return r,
    };
    let pages = page.total.div_ceil(PER_PAGE).max(1);
    let link = |n: u64| {
        format!(
            "?{}",
            query_string(&filter.fields, &[("page", n.to_string())])
        )
    };
    let base_fields: Vec<(&'static str, String)> = filter
        .fields
        .iter()
        .filter(|(k, _)| *k != "state" && *k != "rule")
        .cloned()
        .collect();
    let by_state = page
        .by_state
        .iter()
        .map(|(s, n)| {
            (
                s.as_str(),
                *n,
                format!(
                    "?{}",
                    query_string(&base_fields, &[("state", s.as_str().to_owned())])
                ),
            )
        })
        .collect();
    let by_rule = page
        .by_rule
        .iter()
        .map(|(rule, n)| {
            (
                Shown::new(rule),
                *n,
                format!(
                    "?{}",
                    query_string(
                        &base_fields,
                        &[("state", "held".to_owned()), ("rule", rule.clone())]
                    )
                ),
            )
        })
        .collect();
    render(&ListPage {
        fleet,
        rows: page.rows.iter().map(|r| list_row(&desk, r, now)).collect(),
        total: page.total,
        by_state,
        by_rule,
        page: page_no,
        pages,
        prev: (page_no > 1).then(|| link(page_no - 1)),
        next: (page_no < pages).then(|| link(page_no + 1)),
        can_act: who.role >= Role::Reviewer,
        pleas,
        head: who.head(),
        base: desk.base(),
        filter,
    })
}
