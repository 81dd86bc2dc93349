// SPDX-License-Identifier: GPL-3.0-or-later
//! Per-connection and per-message data kept between milter stages.

use crate::decide::{Envelope, gather};
use crate::message::{HeaderBuffer, HeaderFields, extract};
use crate::policy::{MessageFacts, VERDICT_HEADER};
use crate::quarantine::COPY_HEADER;
use crate::quarantine::record::MAX_STORED_HEADER_BYTES;
use crate::shared::{Generation, InflightGuard};
use indymilter::ProtoOpts;
use std::sync::Arc;

/// Data of one milter connection (one SMTP session in Postfix).
#[derive(Default)]
pub struct Session {
    /// Connection facts.
    pub conn: ConnData,
    /// The message in progress, from MAIL to end of message.
    pub msg: Option<MessageData>,
    /// Stages whose reply was waived at negotiation (`NOREPLY_*`).
    pub noreply: ProtoOpts,
    /// Counts the connection as active while the session lives.
    pub connection: Option<crate::metrics::ConnectionGuard>,
}

/// Facts about the SMTP client, valid for every message of the connection.
#[derive(Clone, Debug, Default)]
pub struct ConnData {
    /// Client IP address, or the socket name Postfix reported.
    pub client: Option<String>,
    /// Mail submitted on this host (sendmail, pickup): Postfix reports such a
    /// connection from port 0, which no SMTP client can have.
    pub local_submission: bool,
}

/// Facts about the message in progress.
pub struct MessageData {
    /// Configuration and directory in force when the message started; a reload does
    /// not change them.
    pub runtime: Arc<Generation>,
    /// Sender, SASL login (`{auth_authen}` at MAIL) and recipients.
    pub envelope: Envelope,
    /// Header bytes received so far.
    pub headers: HeaderBuffer,
    /// Every header field as received, for the quarantine record.
    pub fields: HeaderFields,
    /// How many `X-Fanout-Verdict` headers arrived with the message.
    pub foreign_verdict_headers: i32,
    /// The values of the [`COPY_HEADER`] fields that arrived (at most two kept).
    pub copy_marks: Vec<String>,
    /// How many [`COPY_HEADER`] fields arrived.
    pub copy_headers: i32,
    /// Keeps the message counted as in flight until it is dropped.
    pub _inflight: InflightGuard,
}

impl Session {
    /// A session whose stages in `noreply` get no reply.
    pub fn new(noreply: ProtoOpts) -> Self {
        Session {
            noreply,
            ..Session::default()
        }
    }

    /// Starts a new message at MAIL, dropping any unfinished one.
    pub fn init_message(
        &mut self,
        runtime: Arc<Generation>,
        sender: &str,
        sasl_login: Option<String>,
        inflight: InflightGuard,
    ) {
        let cap = runtime.config.max_header_bytes;
        let envelope = Envelope::new(runtime.config.postfix.address_form(), sender, sasl_login);
        self.msg = Some(MessageData {
            envelope,
            runtime,
            headers: HeaderBuffer::new(cap),
            fields: HeaderFields::new(MAX_STORED_HEADER_BYTES),
            foreign_verdict_headers: 0,
            copy_marks: Vec::new(),
            copy_headers: 0,
            _inflight: inflight,
        });
    }

    /// Drops the message in progress (ABORT, close, or after end of message).
    pub fn abort_message(&mut self) {
        self.msg = None;
    }
}

impl MessageData {
    /// Adds an envelope recipient (`<addr>` as sent by the MTA).
    pub fn add_envelope_recipient(&mut self, raw: &str) {
        self.envelope.add_recipient(raw);
    }

    /// Adds one header.
    pub fn add_header(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(VERDICT_HEADER.as_bytes()) {
            self.foreign_verdict_headers = self.foreign_verdict_headers.saturating_add(1);
        }
        if name.eq_ignore_ascii_case(COPY_HEADER.as_bytes()) {
            self.copy_headers = self.copy_headers.saturating_add(1);
            if self.copy_marks.len() < 2 {
                self.copy_marks
                    .push(String::from_utf8_lossy(value).into_owned());
            }
        }
        self.headers.push(name, value);
        if !name.eq_ignore_ascii_case(COPY_HEADER.as_bytes()) {
            // The mark's token is a secret: never stored, never shown.
            self.fields.push(name, value);
        }
    }

    /// Turns the collected data into the facts the policy decides on.
    pub fn finish(self, queue_id: Option<String>, conn: &ConnData) -> FinishedMessage {
        let (raw, truncated) = self.headers.finish();
        let mut headers = extract(&raw);
        headers.truncated = truncated;
        let mut envelope = self.envelope;
        envelope.queue_id = queue_id;
        envelope.client = conn.client.clone();
        FinishedMessage {
            facts: gather(&self.runtime.directory, envelope, headers),
            runtime: self.runtime,
            foreign_verdict_headers: self.foreign_verdict_headers,
            copy_marks: self.copy_marks,
            copy_headers: self.copy_headers,
            header_fields: self.fields.into_vec(),
            _inflight: self._inflight,
        }
    }
}

/// A message whose data is complete, ready to be decided at end of message.
pub struct FinishedMessage {
    /// The facts for the policy core.
    pub facts: MessageFacts,
    /// Configuration and directory the message started under.
    pub runtime: Arc<Generation>,
    /// How many `X-Fanout-Verdict` headers arrived with the message.
    pub foreign_verdict_headers: i32,
    /// The values of the first [`COPY_HEADER`] fields.
    pub copy_marks: Vec<String>,
    /// How many [`COPY_HEADER`] fields arrived.
    pub copy_headers: i32,
    /// Every header field as received (capped), for the quarantine record.
    pub header_fields: Vec<(String, String)>,
    /// Keeps the message counted as in flight until the reply is sent.
    pub _inflight: InflightGuard,
}
