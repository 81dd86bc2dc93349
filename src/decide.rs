// SPDX-License-Identifier: GPL-3.0-or-later
//! One decision, the same for the milter, `explain` and the tests: plan what the message
//! asks of the shared state, observe it, evaluate, write the quarantine record of a
//! hold, carry the effect out, settle the state's books.
//!
//! The pure steps are the policy's ([`policy::state_plan`], [`policy::evaluate`],
//! [`policy::effect()`]); the rest is done through two ports, so each caller plugs in
//! what it has: the milter a [`GuardState`] and its end-of-message context, the tests
//! a [`GuardState`] and [`Offline`], `explain` [`NoState`] and [`Offline`].

use crate::directory::Directory;
use crate::policy::address::AddressForm;
use crate::policy::{
    self, Action, BrakeFact, ConfirmedList, Effect, Evaluation, HeaderFacts, MessageFacts, Policy,
    RecipientSet, Replies, StateFacts, StatePlan,
};
use crate::state::guard::Observed;
use crate::state::{Guard, StateError};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::time::Instant;
use tracing::{debug, warn};

/// The envelope of one message, brought to the form the MTA compares addresses in:
/// collected by the milter from MAIL and RCPT, or given to `explain` on its command line.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Postfix's queue id (macro `i`), when known.
    pub queue_id: Option<String>,
    /// The envelope sender, canonical.
    pub sender: String,
    /// The SASL login; an empty one counts as none.
    pub sasl_login: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    /// The envelope recipients, canonical and without duplicates.
    pub recipients: RecipientSet,
}

impl Envelope {
    /// A message from `sender` (as the MTA sent it) with no recipient yet.
    pub fn new(form: AddressForm, sender: &str, sasl_login: Option<String>) -> Envelope {
        Envelope {
            queue_id: None,
            sender: form.canonical(sender),
            sasl_login: sasl_login.filter(|s| !s.is_empty()),
            client: None,
            recipients: RecipientSet::with_form(form),
        }
    }

    /// Adds an envelope recipient (`<addr>` as sent by the MTA).
    pub fn add_recipient(&mut self, raw: &str) {
        self.recipients.add(raw);
    }
}

/// The facts a decision starts from: the envelope, the headers, and the audience the
/// directory gives them. The milter and `explain` both gather their facts here.
pub fn gather(directory: &Directory, envelope: Envelope, headers: HeaderFacts) -> MessageFacts {
    let audience = directory.message_audience(&envelope.recipients, &headers);
    MessageFacts {
        queue_id: envelope.queue_id,
        sender: envelope.sender,
        sasl_login: envelope.sasl_login,
        client: envelope.client,
        recipients: envelope.recipients,
        headers,
        audience,
        released: None,
    }
}

/// The shared state (storms, rates, the breaker) as one decision sees it.
pub trait StateStep {
    /// Why the state could not answer.
    type Error;

    /// Asks the state what `plan` needs. Called only for a plan that asks something.
    fn observe(
        &mut self,
        policy: &Policy,
        plan: StatePlan,
        queue_id: &str,
    ) -> impl Future<Output = Result<StateFacts, Self::Error>> + Send;

    /// The emergency brake, when an admin pulled it: asked for every message (the
    /// plan does not know of it), so it must answer from memory. None by default.
    fn brake(&self) -> Option<BrakeFact> {
        None
    }

    /// Settles the books after the effect was carried out or failed: `leaves` is true
    /// when the message left (accepted or tagged, and the answer given to the MTA).
    /// Called only after [`StateStep::observe`].
    fn settle(&mut self, leaves: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Where a decision's effect goes.
pub trait Outlet {
    /// Why recording or applying failed.
    type Error;
    /// What carrying an effect out gives back (the milter: the protocol status).
    type Applied;

    /// Writes the quarantine record of a message about to be held, durably: called
    /// before [`Outlet::apply`], which is not called when this fails.
    fn record_held(
        &mut self,
        facts: &MessageFacts,
        evaluation: &Evaluation,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The lists the sender known by `key` (`policy::confirm_key`) confirmed lately:
    /// asked only of a message whose verdict is `confirm`. A failure is the outlet's to
    /// log; it answers none, and the message waits for its sender as it would anyway.
    /// None by default.
    fn confirmed(&mut self, key: &str) -> impl Future<Output = Vec<ConfirmedList>> + Send {
        let _ = key;
        async { Vec::new() }
    }

    /// Carries the effect out.
    fn apply(
        &mut self,
        effect: &Effect,
    ) -> impl Future<Output = Result<Self::Applied, Self::Error>> + Send;
}

/// What was decided about one message, and done with it.
#[derive(Clone, Debug)]
pub struct Decision<A> {
    /// What the shared state said (empty when nothing was asked).
    pub state: StateFacts,
    /// The verdict and the counts behind it.
    pub evaluation: Evaluation,
    /// The effect carried out.
    pub effect: Effect,
    /// What the outlet gave back.
    pub applied: A,
}

/// Decides one message and carries the decision out. `queue_id` is the id shown in
/// logs and replies. A state fault ends the decision before anything is applied (and
/// nothing is settled: nothing was observed); a failed record stops the hold, and the
/// state's books are settled with the message counted as not sent before the error is
/// returned.
pub async fn decide<S, O>(
    policy: &Policy,
    replies: &Replies,
    facts: &MessageFacts,
    queue_id: &str,
    state: &mut S,
    outlet: &mut O,
) -> Result<Decision<O::Applied>, O::Error>
where
    S: StateStep<Error: std::fmt::Display>,
    O: Outlet<Error: From<S::Error>>,
{
    let plan = policy::state_plan(policy, facts);
    let observed = !plan.is_empty();
    let mut state_facts = if observed {
        state.observe(policy, plan, queue_id).await?
    } else {
        StateFacts::default()
    };
    state_facts.brake = state.brake();
    let started = Instant::now();
    let mut evaluation = policy::evaluate(policy, facts, &state_facts);
    debug!(
        queue_id,
        micros = started.elapsed().as_micros() as u64,
        "policy evaluated"
    );
    if evaluation.verdict.action == Action::Confirm
        && let Some(key) = policy::confirm_key(facts.sasl_login.as_deref())
    {
        let confirmed = outlet.confirmed(&key).await;
        if !confirmed.is_empty() {
            state_facts.confirmed = confirmed;
            evaluation = policy::evaluate(policy, facts, &state_facts);
        }
    }
    let effect = policy::effect(&evaluation.verdict, replies, queue_id);
    let outcome = async {
        if effect.hold.is_some() {
            outlet.record_held(facts, &evaluation).await?;
        }
        outlet.apply(&effect).await
    }
    .await;
    if observed && let Err(e) = state.settle(outcome.is_ok() && effect.leaves()).await {
        warn!(queue_id, "rate and breaker state not updated: {e}");
    }
    Ok(Decision {
        state: state_facts,
        evaluation,
        effect,
        applied: outcome?,
    })
}

/// The shared state through a [`Guard`].
#[derive(Debug)]
pub struct GuardState<'g> {
    guard: &'g Guard,
    observed: Option<Observed>,
    settle_error: Option<String>,
}

impl<'g> GuardState<'g> {
    /// Asks `guard`.
    pub fn new(guard: &'g Guard) -> Self {
        GuardState {
            guard,
            observed: None,
            settle_error: None,
        }
    }

    /// Why settling the books failed, if it did ([`decide`] only logs it: the message's
    /// fate is already sealed by then).
    pub fn settle_error(&self) -> Option<&str> {
        self.settle_error.as_deref()
    }
}

impl StateStep for GuardState<'_> {
    type Error = StateError;

    async fn observe(
        &mut self,
        policy: &Policy,
        plan: StatePlan,
        queue_id: &str,
    ) -> Result<StateFacts, StateError> {
        let observed = self.guard.observe(policy, plan, queue_id).await?;
        let facts = observed.facts.clone();
        self.observed = Some(observed);
        Ok(facts)
    }

    fn brake(&self) -> Option<BrakeFact> {
        self.guard.brake().map(|b| BrakeFact {
            min_audience: b.min_audience,
        })
    }

    async fn settle(&mut self, leaves: bool) -> Result<(), StateError> {
        let settled = match &self.observed {
            Some(observed) => self.guard.settle(observed, leaves).await,
            None => Ok(()),
        };
        if let Err(e) = &settled {
            self.settle_error = Some(e.to_string());
        }
        settled
    }
}

/// No shared state (`explain`, which runs without the daemon): no storm is in
/// progress, every budget has room, the breaker is not tripped.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoState;

impl StateStep for NoState {
    type Error = Infallible;

    async fn observe(
        &mut self,
        _policy: &Policy,
        _plan: StatePlan,
        _queue_id: &str,
    ) -> Result<StateFacts, Infallible> {
        Ok(StateFacts::default())
    }

    async fn settle(&mut self, _leaves: bool) -> Result<(), Infallible> {
        Ok(())
    }
}

/// An outlet that writes no record and applies nothing (`explain`, the tests): the
/// message leaves exactly when its effect says so ([`Effect::leaves`]). It never fails;
/// `E` is the error of the state it is paired with (none for [`NoState`]).
#[derive(Debug)]
pub struct Offline<E = Infallible>(PhantomData<fn() -> E>);

impl Offline {
    /// The outlet paired with [`NoState`]; with another state, take
    /// `Offline::<ItsError>::default()`.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<E> Default for Offline<E> {
    fn default() -> Self {
        Offline(PhantomData)
    }
}

impl<E> Outlet for Offline<E> {
    type Error = E;
    type Applied = ();

    async fn record_held(
        &mut self,
        _facts: &MessageFacts,
        _evaluation: &Evaluation,
    ) -> Result<(), E> {
        Ok(())
    }

    async fn apply(&mut self, _effect: &Effect) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Levels, RatePolicy, StateFacts};
    use futures_util::FutureExt;
    use std::sync::{Arc, Mutex};

    /// The milter and `explain` gather facts the same way: the sender and recipients
    /// in canonical form (a bare name qualified), an empty login as none, the queue id
    /// and client carried over.
    #[test]
    fn an_envelope_is_gathered_into_canonical_facts() {
        let form = AddressForm {
            myorigin: "corp.example".into(),
            delimiter: Default::default(),
        };
        let mut envelope = Envelope::new(form, "<Ann@Corp.Example>", Some(String::new()));
        envelope.add_recipient("<bob@corp.example>");
        envelope.add_recipient("postmaster");
        envelope.add_recipient("<bob@corp.example>");
        envelope.queue_id = Some("4AbC".into());
        envelope.client = Some("192.0.2.1".into());
        let facts = gather(&Directory::empty(), envelope, HeaderFacts::default());
        assert_eq!(facts.sender, "Ann@corp.example");
        assert_eq!(facts.sasl_login, None);
        assert_eq!(
            facts.recipients.iter().collect::<Vec<_>>(),
            ["bob@corp.example", "postmaster@corp.example"]
        );
        assert_eq!(facts.queue_id.as_deref(), Some("4AbC"));
        assert_eq!(facts.client.as_deref(), Some("192.0.2.1"));
        assert_eq!(
            Envelope::new(AddressForm::default(), "a@b.example", Some("ann".into())).sasl_login,
            Some("ann".into())
        );
    }

    /// Every call to either port, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    fn note(log: &Log, call: String) {
        log.lock().unwrap().push(call);
    }

    struct FakeState {
        log: Log,
        fail_observe: bool,
    }

    impl StateStep for FakeState {
        type Error = StateError;

        async fn observe(
            &mut self,
            _policy: &Policy,
            _plan: StatePlan,
            _queue_id: &str,
        ) -> Result<StateFacts, StateError> {
            note(&self.log, "observe".into());
            if self.fail_observe {
                return Err(StateError("down".into()));
            }
            Ok(StateFacts::default())
        }

        async fn settle(&mut self, leaves: bool) -> Result<(), StateError> {
            note(&self.log, format!("settle leaves={leaves}"));
            Ok(())
        }
    }

    #[derive(Debug, thiserror::Error)]
    enum FakeError {
        #[error("state: {0}")]
        State(#[from] StateError),
        #[error("outlet failed")]
        Outlet,
    }

    #[derive(Default)]
    struct FakeOutlet {
        log: Log,
        fail_record: bool,
        fail_apply: bool,
        confirmed: Vec<ConfirmedList>,
    }

    impl Outlet for FakeOutlet {
        type Error = FakeError;
        type Applied = Action;

        async fn record_held(
            &mut self,
            _facts: &MessageFacts,
            _evaluation: &Evaluation,
        ) -> Result<(), FakeError> {
            note(&self.log, "record".into());
            if self.fail_record {
                return Err(FakeError::Outlet);
            }
            Ok(())
        }

        async fn confirmed(&mut self, key: &str) -> Vec<ConfirmedList> {
            note(&self.log, format!("confirmed? {key}"));
            self.confirmed.clone()
        }

        async fn apply(&mut self, effect: &Effect) -> Result<Action, FakeError> {
            note(&self.log, format!("apply {}", effect.action));
            if self.fail_apply {
                return Err(FakeError::Outlet);
            }
            Ok(effect.action)
        }
    }

    #[test]
    fn a_confirm_verdict_asks_for_the_senders_confirmations_and_only_it() {
        use crate::policy::{AudienceFacts, Hidden, ListFacts};
        let p = Policy {
            hidden: Hidden {
                min_audience: 100,
                action: Action::Confirm,
                ..Hidden::default()
            },
            ..Policy::default()
        };
        let mut f = to(1);
        f.sasl_login = Some("Ann".into());
        f.audience = Some(AudienceFacts {
            total: 400,
            lists: vec![ListFacts {
                address: "ward@example.org".into(),
                size: 400,
                ..Default::default()
            }],
            ..Default::default()
        });
        let run = |outlet: &mut FakeOutlet, f: &MessageFacts| {
            let mut state = FakeState {
                log: Log::default(),
                fail_observe: false,
            };
            decide(&p, &replies(), f, "Q1", &mut state, outlet)
                .now_or_never()
                .expect("no waiting")
                .expect("decided")
        };
        let mut asked = FakeOutlet::default();
        let d = run(&mut asked, &f);
        assert_eq!(d.applied, Action::Confirm);
        assert_eq!(
            asked.log.lock().unwrap().as_slice(),
            ["confirmed? sasl:ann", "record", "apply confirm"]
        );
        let mut remembered = FakeOutlet {
            confirmed: vec![ConfirmedList {
                address: "ward@example.org".into(),
                size: 400,
            }],
            ..Default::default()
        };
        let d = run(&mut remembered, &f);
        assert_eq!(d.applied, Action::Accept);
        assert_eq!(d.evaluation.verdict.reasons[0].rule, "hidden");
        assert_eq!(
            remembered.log.lock().unwrap().as_slice(),
            ["confirmed? sasl:ann", "apply accept"]
        );
        let mut small = FakeOutlet::default();
        run(&mut small, &to(3));
        assert_eq!(
            small.log.lock().unwrap().as_slice(),
            ["apply accept"],
            "not asked"
        );
    }

    fn replies() -> Replies {
        Replies {
            contact: "x".into(),
            reject: "No: {reason}".into(),
            tempfail: "Later: {reason}".into(),
        }
    }

    /// Envelope recipients: 10 tag, 20 hold, 30 reject; with `state`, each message
    /// charges a rate budget, so the state is asked.
    fn policy(state: bool) -> Policy {
        Policy {
            envelope: Levels {
                tag: 10,
                quarantine: 20,
                reject: 30,
                monitor: false,
            },
            rate: RatePolicy {
                recipients_per_day: if state { 1_000_000 } else { 0 },
                ..RatePolicy::default()
            },
            ..Policy::default()
        }
    }

    fn to(n: usize) -> MessageFacts {
        let mut f = MessageFacts {
            sender: "ann@example.org".into(),
            ..Default::default()
        };
        for i in 0..n {
            f.recipients.add(&format!("u{i}@example.org"));
        }
        f
    }

    /// Runs one decision; the calls to both ports in order, and the result.
    fn run(
        policy: &Policy,
        n: usize,
        fail_observe: bool,
        mut outlet: FakeOutlet,
    ) -> (Vec<String>, Result<Decision<Action>, FakeError>) {
        let log = Log::default();
        outlet.log = log.clone();
        let mut state = FakeState {
            log: log.clone(),
            fail_observe,
        };
        let result = decide(policy, &replies(), &to(n), "Q", &mut state, &mut outlet)
            .now_or_never()
            .expect("the fakes never wait");
        let calls = log.lock().unwrap().clone();
        (calls, result)
    }

    #[test]
    fn a_tagged_message_is_applied_and_counted_as_sent() {
        let (calls, result) = run(&policy(true), 10, false, FakeOutlet::default());
        assert_eq!(calls, ["observe", "apply tag", "settle leaves=true"]);
        let d = result.expect("decided");
        assert_eq!(d.applied, Action::Tag);
        assert_eq!(d.effect.action, Action::Tag);
        assert_eq!(d.evaluation.verdict.action, Action::Tag);
    }

    #[test]
    fn a_hold_is_recorded_before_it_is_applied_and_does_not_leave() {
        let (calls, result) = run(&policy(true), 20, false, FakeOutlet::default());
        assert_eq!(
            calls,
            [
                "observe",
                "record",
                "apply quarantine",
                "settle leaves=false"
            ]
        );
        assert_eq!(result.expect("decided").applied, Action::Quarantine);
    }

    #[test]
    fn a_failed_record_stops_the_hold_and_the_budget_is_given_back() {
        let outlet = FakeOutlet {
            fail_record: true,
            ..FakeOutlet::default()
        };
        let (calls, result) = run(&policy(true), 20, false, outlet);
        assert_eq!(calls, ["observe", "record", "settle leaves=false"]);
        assert!(matches!(result, Err(FakeError::Outlet)));
    }

    #[test]
    fn an_accept_that_could_not_be_applied_does_not_count_as_sent() {
        let outlet = FakeOutlet {
            fail_apply: true,
            ..FakeOutlet::default()
        };
        let (calls, result) = run(&policy(true), 1, false, outlet);
        assert_eq!(calls, ["observe", "apply accept", "settle leaves=false"]);
        assert!(matches!(result, Err(FakeError::Outlet)));
    }

    #[test]
    fn a_refusal_is_applied_without_a_record_and_does_not_leave() {
        let (calls, result) = run(&policy(true), 30, false, FakeOutlet::default());
        assert_eq!(calls, ["observe", "apply reject", "settle leaves=false"]);
        let d = result.expect("decided");
        assert_eq!(d.effect.reply.expect("a reply").code, "550");
    }

    #[test]
    fn a_state_fault_applies_nothing() {
        let (calls, result) = run(&policy(true), 30, true, FakeOutlet::default());
        assert_eq!(calls, ["observe"]);
        assert!(matches!(result, Err(FakeError::State(_))));
    }

    #[test]
    fn a_message_that_asks_nothing_of_the_state_neither_observes_nor_settles() {
        let (calls, result) = run(&policy(false), 10, false, FakeOutlet::default());
        assert_eq!(calls, ["apply tag"]);
        assert!(result.expect("decided").state == StateFacts::default());
    }

    #[test]
    fn offline_decides_without_state_or_outlet() {
        let d: Result<_, Infallible> = decide(
            &policy(true),
            &replies(),
            &to(20),
            "Q",
            &mut NoState,
            &mut Offline::new(),
        )
        .now_or_never()
        .expect("offline never waits");
        let Ok(d) = d;
        assert_eq!(d.effect.action, Action::Quarantine);
        assert_eq!(d.state, StateFacts::default());
    }

    /// [`GuardState`] hands the guard's real answer to the policy: a relay breaker of
    /// 500 recipients a minute lets the first 600-recipient message leave and holds the
    /// second (observing nothing would let both through).
    #[tokio::test]
    async fn the_guard_state_reports_what_the_guard_observed() {
        use crate::clock::ManualClock;
        use crate::policy::BreakerPolicy;
        use crate::state::{Guard, MemoryBackend};
        let policy = Policy {
            breaker: BreakerPolicy {
                max_per_minute: 500,
                min_audience: 500,
                monitor: false,
            },
            ..Policy::default()
        };
        let clock = ManualClock::new(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_040),
        );
        let guard = Guard::new(Arc::new(MemoryBackend::new()), Arc::new(clock), None);
        let mut actions = Vec::new();
        for _ in 0..2 {
            let mut state = GuardState::new(&guard);
            let d = decide(
                &policy,
                &replies(),
                &to(600),
                "Q",
                &mut state,
                &mut Offline::<StateError>::default(),
            )
            .await
            .expect("memory state never fails");
            assert_eq!(state.settle_error(), None);
            actions.push(d.effect.action);
        }
        assert_eq!(actions, [Action::Accept, Action::Quarantine]);
    }

    /// The brake is asked for every message, also one whose plan asks the state
    /// nothing (no storm, rate or breaker configured): pulled at 600, it holds the
    /// 600-recipient message and lets a 599-recipient one go.
    #[tokio::test]
    async fn the_brake_holds_mail_that_asks_the_state_nothing() {
        use crate::state::{Brake, Guard, MemoryBackend};
        let policy = Policy::default();
        assert!(policy::state_plan(&policy, &to(600)).is_empty());
        let guard = Guard::new(
            Arc::new(MemoryBackend::new()),
            Arc::new(crate::clock::SystemClock),
            None,
        );
        let brake = Brake {
            min_audience: 600,
            since: 0,
            until: None,
            by: "carol".into(),
            comment: "incident".into(),
        };
        guard.set_brake(Some(brake)).await.unwrap();
        let mut actions = Vec::new();
        for n in [599, 600] {
            let d = decide(
                &policy,
                &replies(),
                &to(n),
                "Q",
                &mut GuardState::new(&guard),
                &mut Offline::<StateError>::default(),
            )
            .await
            .expect("memory state never fails");
            actions.push(d.effect.action);
            assert_eq!(d.state.brake.map(|b| b.min_audience), Some(600));
        }
        assert_eq!(actions, [Action::Accept, Action::Quarantine]);
    }
}
