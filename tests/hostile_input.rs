//! Hostile proposer messages against a real safekeeper process: one message
//! that the store could not hold, or that would poison the term, is refused
//! to its sender with a SQLSTATE, and the node goes on serving every
//! timeline with its terms as they were (issue 24, defects 1 and 2).

mod common;

use common::*;
use proptest::prelude::*;
use walkeeper::codec::{
    decode_acceptor_message, decode_proposer_message, encode_acceptor_message,
    encode_proposer_message, encode_stored, MAX_STRUCT_SIZE,
};
use walkeeper::consensus::acceptor::{term_lsn, Acceptor, Write};
use walkeeper::consensus::limits::{MAX_MEMBER_ADDRESS_LEN, MAX_TERM_HISTORY, MAX_TERM_JUMP};
use walkeeper::consensus::messages::*;
use walkeeper::consensus::proposer::{Action, Proposer, ProposerConfig};
use walkeeper::consensus::term_history::TermHistory;
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;

fn timeline(n: u8) -> Ttid {
    Ttid::new(TenantId([n; 16]), TimelineId([n; 16]))
}

/// A one-member (node 1) greeting for timeline `n`.
fn greeting_of(n: u8, create: bool) -> Greeting {
    let mut g = greeting(&[1], create);
    g.ttid = timeline(n);
    g
}

/// The SQLSTATE of the ErrorResponse that must come next, after which the
/// safekeeper closes the connection.
fn refused(c: &mut RawClient) -> String {
    let m = c.read().expect("an ErrorResponse");
    assert_eq!(m.tag, b'E', "expected a refusal, got {m:?}");
    let code = m.error_field(b'C').unwrap_or_default();
    eprintln!("refused with {code}: {:?}", m.error_field(b'M'));
    assert!(c.read().is_none(), "the connection closes after a refusal");
    code
}

fn greet(c: &mut RawClient, g: Greeting) -> AcceptorGreeting {
    c.send(&ProposerMessage::Greeting(g));
    match c.recv() {
        AcceptorMessage::Greeting(a) => a,
        other => panic!("expected AcceptorGreeting, got {other:?}"),
    }
}

/// Elect a proposer for timeline `n` in `term` at START and store `len`
/// bytes of WAL through it: the node serves that timeline.
fn serves(sk: &Safekeeper, n: u8, term: u64, len: usize) {
    let mut c = RawClient::proposer(sk.pg_addr);
    elect_single(&mut c, greeting_of(n, true), term);
    let wal = wal_bytes(term, START, len);
    let end = push(&mut c, term, START, &wal, 8192, START);
    assert_eq!(end, START + len as u64);
}

/// A proxy of an older release (wire protocol 2, whose greeting has another
/// layout) is told which protocol each side speaks, not that its message
/// is malformed; the node serves on.
#[test]
fn a_greeting_of_another_wire_protocol_is_refused_by_version() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk"), 1, true);
    let mut v2 =
        encode_proposer_message(&ProposerMessage::Greeting(greeting_of(0xd1, true))).to_vec();
    v2[1..5].copy_from_slice(&2u32.to_le_bytes());
    v2.truncate(v2.len() - 8);
    let mut c = RawClient::proposer(sk.pg_addr);
    c.send_copy_data(&v2);
    let m = c.read().expect("an ErrorResponse");
    assert_eq!(m.error_field(b'C').as_deref(), Some("0A000"), "{m:?}");
    let text = m.error_field(b'M').unwrap_or_default();
    assert!(
        text.contains("wire protocol 2")
            && text.contains(&format!(
                "this build speaks {}",
                walkeeper::codec::PROTOCOL_VERSION
            )),
        "{text}"
    );
    serves(&sk, 0xd2, 1, 10_000);
}

#[test]
fn oversized_values_and_a_poisoning_term_are_refused_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut sk = Safekeeper::start(&dir.path().join("sk"), 1, true);

    // 1. A greeting that creates a timeline with one member address as long
    // as the message limit allows: the timeline state holding it would be
    // larger than the store can encode.
    let mut g = greeting_of(0xa1, true);
    g.members.insert(NodeId(1), String::new());
    let body = encode_proposer_message(&ProposerMessage::Greeting(g.clone())).len() - 1;
    let len = MAX_STRUCT_SIZE as usize - body;
    g.members.insert(NodeId(1), "h".repeat(len));
    let msg = ProposerMessage::Greeting(g);
    assert!(
        decode_proposer_message(&encode_proposer_message(&msg)).is_ok(),
        "the greeting itself is within the wire limits"
    );
    let mut c = RawClient::proposer(sk.pg_addr);
    c.send(&msg);
    assert_eq!(refused(&mut c), "54000");
    // It was not created, not even half-way.
    let mut c = RawClient::proposer(sk.pg_addr);
    c.send(&ProposerMessage::Greeting(greeting_of(0xa1, false)));
    assert_eq!(refused(&mut c), "42704");
    serves(&sk, 0xc1, 1, 100_000);

    // 2. An Elected whose term history fills the message body (a term and
    // an LSN per entry, after term, start_streaming_at and the count, and
    // before pg_tli and the empty ancestors): with the rest of the state it
    // is more than the store can encode.
    let n = (MAX_STRUCT_SIZE - 36) / 16;
    let mut c = RawClient::proposer(sk.pg_addr);
    assert_eq!(greet(&mut c, greeting_of(0xb1, true)).term, 0);
    c.send(&ProposerMessage::VoteRequest(VoteRequest::new(n)));
    assert!(matches!(c.recv(), AcceptorMessage::Vote(v) if v.granted));
    let history = TermHistory((1..=n).map(|t| term_lsn(t, START)).collect());
    let msg = ProposerMessage::Elected(Elected {
        term: n,
        start_streaming_at: Lsn(START),
        term_history: history,
        pg_tli: 0,
        pg_ancestors: Vec::new(),
    });
    assert!(decode_proposer_message(&encode_proposer_message(&msg)).is_ok());
    c.send(&msg);
    assert_eq!(refused(&mut c), "54000");
    serves(&sk, 0xc2, 1, 100_000);

    // The same timeline goes on in the term it voted for.
    let mut c = RawClient::proposer(sk.pg_addr);
    assert_eq!(greet(&mut c, greeting_of(0xb1, false)).term, n);
    c.send(&ProposerMessage::Elected(Elected {
        term: n,
        start_streaming_at: Lsn(START),
        term_history: TermHistory(vec![term_lsn(n, START)]),
        pg_tli: 0,
        pg_ancestors: Vec::new(),
    }));
    assert!(matches!(c.recv(), AcceptorMessage::Append(a) if a.flush_lsn == Lsn(START)));
    let end = push(&mut c, n, START, &wal_bytes(n, START, 5000), 1000, START);

    // 3. A VoteRequest for the last term there is: refused, not persisted,
    // and the timeline stays in its term.
    for term in [u64::MAX, n + (1 << 32) + 1] {
        let mut c = RawClient::proposer(sk.pg_addr);
        assert_eq!(greet(&mut c, greeting_of(0xb1, false)).term, n);
        c.send(&ProposerMessage::VoteRequest(VoteRequest::new(term)));
        assert_eq!(refused(&mut c), "08P01", "term {term}");
    }
    sk.kill9();
    sk.restart();
    let mut c = RawClient::proposer(sk.pg_addr);
    assert_eq!(greet(&mut c, greeting_of(0xb1, false)).term, n);
    // An honest next election goes through and keeps the WAL.
    c.send(&ProposerMessage::VoteRequest(VoteRequest::new(n + 1)));
    match c.recv() {
        AcceptorMessage::Vote(v) => assert!(v.granted && v.flush_lsn == Lsn(end), "{v:?}"),
        other => panic!("{other:?}"),
    }
    serves(&sk, 0xc3, 7, 100_000);
}

// ---------------------------------------------------------------------------
// The consensus core driven by arbitrary messages (proptest): no panic, and
// nothing either side builds is beyond what its peer or its store accepts.

/// A term relative to the receiver's, or absolute (hostile values included).
#[derive(Debug, Clone)]
enum T {
    Own,
    Next,
    Abs(u64),
}

/// An LSN relative to the receiver's end of WAL, or absolute.
#[derive(Debug, Clone)]
enum L {
    End,
    Plus(u64),
    Abs(u64),
}

fn term() -> impl Strategy<Value = T> {
    prop_oneof![
        6 => Just(T::Own),
        2 => Just(T::Next),
        1 => prop_oneof![
            0u64..20,
            Just(MAX_TERM_JUMP),
            Just(MAX_TERM_JUMP + 1),
            u64::MAX - 2..=u64::MAX,
            any::<u64>(),
        ]
        .prop_map(T::Abs),
    ]
}

fn lsn() -> impl Strategy<Value = L> {
    prop_oneof![
        6 => Just(L::End),
        1 => (1u64..100_000).prop_map(L::Plus),
        1 => prop_oneof![
            Just(START),
            u64::MAX - 200..=u64::MAX,
            any::<u64>(),
        ]
        .prop_map(L::Abs),
    ]
}

fn history_len() -> impl Strategy<Value = u64> {
    let max = MAX_TERM_HISTORY as u64;
    // The last: as many entries as fit a message body.
    let body_full = (MAX_STRUCT_SIZE - 24) / 16;
    prop_oneof![4 => 0u64..4, 1 => max - 1..=max + 1, 1 => Just(body_full)]
}

fn resolve_term(t: &T, own: u64) -> u64 {
    match t {
        T::Own => own,
        T::Next => own.saturating_add(1),
        T::Abs(v) => *v,
    }
}

fn resolve_lsn(l: &L, end: Lsn) -> Lsn {
    match l {
        L::End => end,
        L::Plus(n) => Lsn(end.0.saturating_add(*n)),
        L::Abs(v) => Lsn(*v),
    }
}

/// `len` history entries ending with (`last`, `at`), terms consecutive.
fn history(len: u64, last: u64, at: Lsn) -> TermHistory {
    let first = last.saturating_sub(len.saturating_sub(1));
    TermHistory((first..=last).map(|t| term_lsn(t, at.0)).collect())
}

#[derive(Debug, Clone)]
enum ToAcceptor {
    Greeting {
        members: u64,
        addr_len: usize,
    },
    Vote(T),
    /// The honest history (the node's own, then this term) or a long one.
    Elected {
        term: T,
        long: Option<u64>,
    },
    Append {
        term: T,
        begin: L,
        len: usize,
        commit: L,
    },
    Reseed {
        term: T,
        at: L,
    },
}

fn to_acceptor() -> impl Strategy<Value = ToAcceptor> {
    let addr_len = prop_oneof![
        0usize..20,
        MAX_MEMBER_ADDRESS_LEN..=MAX_MEMBER_ADDRESS_LEN + 1,
        Just((1 << 20) - 200),
    ];
    prop_oneof![
        1 => (1u64..=34, addr_len).prop_map(|(members, addr_len)| ToAcceptor::Greeting { members, addr_len }),
        3 => term().prop_map(ToAcceptor::Vote),
        3 => (term(), prop::option::of(history_len())).prop_map(|(term, long)| ToAcceptor::Elected { term, long }),
        4 => (term(), lsn(), 0usize..300, lsn()).prop_map(|(term, begin, len, commit)| ToAcceptor::Append { term, begin, len, commit }),
        1 => (term(), lsn()).prop_map(|(term, at)| ToAcceptor::Reseed { term, at }),
    ]
}

fn acceptor_message(a: &Acceptor, step: &ToAcceptor) -> ProposerMessage {
    let s = a.state();
    match step {
        ToAcceptor::Greeting { members, addr_len } => {
            let mut g = greeting(&[1, 2, 3], false);
            g.members = (1..=*members)
                .map(|i| (NodeId(i), "h".repeat(*addr_len)))
                .collect();
            ProposerMessage::Greeting(g)
        }
        ToAcceptor::Vote(t) => {
            ProposerMessage::VoteRequest(VoteRequest::new(resolve_term(t, s.term)))
        }
        ToAcceptor::Elected { term, long } => {
            let term = resolve_term(term, s.term);
            let mut h = s.term_history.up_to(s.flush_lsn);
            let at = a.divergence_point(&h).unwrap_or(s.flush_lsn);
            match long {
                Some(len) => h = history(*len, term, Lsn(START)),
                None => h.0.push(term_lsn(term, s.flush_lsn.0)),
            }
            ProposerMessage::Elected(Elected {
                term,
                start_streaming_at: at,
                term_history: h,
                pg_tli: 0,
                pg_ancestors: Vec::new(),
            })
        }
        ToAcceptor::Append {
            term,
            begin,
            len,
            commit,
        } => {
            let begin = resolve_lsn(begin, s.flush_lsn);
            // The codec refuses a range that does not match the bytes.
            let len = (*len as u64).min(u64::MAX - begin.0) as usize;
            let mut m = append(resolve_term(term, s.term), begin.0, &vec![7; len], 0);
            if let ProposerMessage::Append(r) = &mut m {
                r.commit_lsn = resolve_lsn(commit, s.flush_lsn);
            }
            m
        }
        ToAcceptor::Reseed { term, at } => ProposerMessage::Reseed(Reseed {
            term: resolve_term(term, s.term),
            start_lsn: resolve_lsn(at, s.flush_lsn),
        }),
    }
}

fn run_acceptor(steps: &[ToAcceptor]) {
    let (mut a, _) = Acceptor::create(NodeId(1), &greeting(&[1, 2, 3], true)).unwrap();
    for step in steps {
        let msg = acceptor_message(&a, step);
        // What the daemon would get off the wire.
        let Ok(msg) = decode_proposer_message(&encode_proposer_message(&msg)) else {
            continue;
        };
        let before = a.state().term;
        let Ok(effects) = a.handle(&msg) else {
            continue;
        };
        assert!(a.state().term - before <= MAX_TERM_JUMP, "{msg:?}");
        for w in &effects.writes {
            if let Write::PutState(s) = w {
                encode_stored(&**s).expect("every state the acceptor writes can be stored");
            }
        }
        for reply in a.on_persisted(effects.seq) {
            let bytes = encode_acceptor_message(&reply.msg);
            assert_eq!(decode_acceptor_message(&bytes).unwrap(), reply.msg);
        }
    }
}

/// The reply an acceptor sends to the oldest request on a connection, its
/// values chosen by the strategy (honest or hostile).
#[derive(Debug, Clone)]
struct Reply {
    term: T,
    granted: bool,
    flush: L,
    local_start: L,
    long: Option<u64>,
}

#[derive(Debug, Clone)]
enum ToProposer {
    Connect(u64),
    Reply(u64, Reply),
    /// A reply of the wrong kind, or to nothing.
    Stray(u64, Reply),
    Push(usize),
    Tick(u64),
}

fn reply() -> impl Strategy<Value = Reply> {
    let long = prop::option::weighted(0.1, history_len());
    (term(), any::<bool>(), lsn(), lsn(), long).prop_map(
        |(term, granted, flush, local_start, long)| Reply {
            term,
            granted: granted || long.is_none(),
            flush,
            local_start,
            long,
        },
    )
}

fn to_proposer() -> impl Strategy<Value = ToProposer> {
    let node = 1u64..=3;
    prop_oneof![
        1 => node.clone().prop_map(ToProposer::Connect),
        24 => (node.clone(), reply()).prop_map(|(n, r)| ToProposer::Reply(n, r)),
        1 => (node, reply()).prop_map(|(n, r)| ToProposer::Stray(n, r)),
        4 => (0usize..5000).prop_map(ToProposer::Push),
        2 => prop_oneof![9 => 0u64..2_000, 1 => 0u64..20_000].prop_map(ToProposer::Tick),
    ]
}

/// Answer `request` (the oldest one sent to `node`) as `r` says.
fn answer(node: u64, request: &ProposerMessage, r: &Reply, p: &Proposer) -> AcceptorMessage {
    let own = match request {
        ProposerMessage::Greeting(_) => p.max_term_seen(),
        ProposerMessage::VoteRequest(v) => v.term,
        ProposerMessage::Elected(e) => e.term,
        ProposerMessage::Append(a) => a.term,
        ProposerMessage::Reseed(m) => m.term,
        ProposerMessage::Configure(m) => m.term,
    };
    let term = resolve_term(&r.term, own);
    let end = match request {
        ProposerMessage::Append(a) => a.end_lsn,
        ProposerMessage::Elected(e) => e.start_streaming_at,
        ProposerMessage::Reseed(m) => m.start_lsn,
        _ => Lsn(START),
    };
    let flush = resolve_lsn(&r.flush, end);
    match request {
        ProposerMessage::Greeting(_) => AcceptorMessage::Greeting(AcceptorGreeting {
            protocol_version: walkeeper::codec::PROTOCOL_VERSION,
            node_id: NodeId(node),
            term,
            conf: walkeeper::consensus::membership::Configuration::initial(Default::default()),
        }),
        ProposerMessage::VoteRequest(_) => AcceptorMessage::Vote(VoteResponse {
            term,
            granted: r.granted,
            flush_lsn: flush,
            commit_lsn: Lsn(START),
            term_history: history(r.long.unwrap_or(1), term.saturating_sub(1), Lsn(START)),
            timeline_start_lsn: Lsn(START),
            tli: 1,
            pg_ancestors: Vec::new(),
        }),
        _ => AcceptorMessage::Append(AppendResponse {
            term,
            flush_lsn: flush,
            commit_lsn: Lsn(START),
            slot_horizon_lsn: Lsn::INVALID,
            local_start_lsn: resolve_lsn(&r.local_start, Lsn(START)).min(flush),
        }),
    }
}

fn run_proposer(steps: &[ToProposer]) {
    let g = greeting(&[1, 2, 3], true);
    let mut p = Proposer::new(ProposerConfig::new(
        g.ttid,
        g.server,
        g.timeline_start_lsn,
        g.members.clone(),
    ));
    // What was sent on each connection and not answered yet, oldest first.
    let mut sent: std::collections::BTreeMap<u64, std::collections::VecDeque<ProposerMessage>> =
        Default::default();
    let mut now = 0;
    let mut out = p.start_election();
    for n in 1..=3 {
        out.extend(p.on_connected(NodeId(n)));
    }
    let mut steps = steps.iter();
    loop {
        for a in out.drain(..) {
            match a {
                Action::Send(n, m) => {
                    let bytes = encode_proposer_message(&m);
                    assert_eq!(
                        decode_proposer_message(&bytes).as_ref(),
                        Ok(&m),
                        "every message the proposer sends is one an acceptor decodes"
                    );
                    sent.entry(n.0).or_default().push_back(m);
                }
                Action::Disconnect(n) => {
                    p.on_disconnected(n);
                    sent.remove(&n.0);
                }
                _ => {}
            }
        }
        let Some(step) = steps.next() else {
            return;
        };
        out = match step {
            ToProposer::Connect(n) => {
                sent.remove(n);
                p.on_connected(NodeId(*n))
            }
            ToProposer::Reply(n, r) => match sent.get_mut(n).and_then(|q| q.pop_front()) {
                Some(request) => {
                    let msg = answer(*n, &request, r, &p);
                    p.on_message(NodeId(*n), msg)
                }
                None => Vec::new(),
            },
            ToProposer::Stray(n, r) => {
                let request = ProposerMessage::Reseed(Reseed {
                    term: p.max_term_seen(),
                    start_lsn: Lsn(START),
                });
                let msg = answer(*n, &request, r, &p);
                sent.get_mut(n).and_then(|q| q.pop_front());
                p.on_message(NodeId(*n), msg)
            }
            ToProposer::Push(len) => p.push_wal(&vec![1; *len]).unwrap_or_default(),
            ToProposer::Tick(dt) => {
                now += dt;
                p.on_tick(now)
            }
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn an_acceptor_fed_arbitrary_messages_stores_only_what_fits(
        steps in prop::collection::vec(to_acceptor(), 1..40)
    ) {
        run_acceptor(&steps);
    }

    #[test]
    fn a_proposer_fed_arbitrary_replies_sends_only_what_acceptors_decode(
        steps in prop::collection::vec(to_proposer(), 1..120)
    ) {
        run_proposer(&steps);
    }
}
