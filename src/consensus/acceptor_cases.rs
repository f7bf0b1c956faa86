//! The acceptor as interaction scripts (`testdata/acceptor_*.txt`), in
//! etcd's `testdata/*.txt` habit: messages go in, and the ready sets, held
//! and released replies and refusals come out, beside the expected output.
//! One script drives one acceptor (node 1 of the members given at `create`).
//!
//! Commands (LSNs as `X/Y`):
//! - `create members=1,2,3 start=0/1000000` — a greeting that creates the
//!   timeline.
//! - `greet [system=N]` — a later proposer's greeting.
//! - `vote term=N`, `elected term=N at=LSN history=T@LSN,..`
//! - `append term=N begin=LSN len=N commit=LSN [peer=LSN] [slots=LSN]` —
//!   `len` bytes of WAL (0: a heartbeat).
//! - `persisted seq=N` — the driver's storage made set N durable: prints
//!   the replies released.
//! - `trim below=LSN`, `settle term=N at=LSN`, `slot-horizon at=LSN`,
//!   `fail` (a storage failure), `state` (the state in memory).

use bytes::Bytes;

use super::acceptor::{Acceptor, Ready, Reply, TimelineState, Write};
use super::messages::*;
use super::script::{run_file, Case};
use super::term_history::{TermHistory, TermLsn};
use crate::codec::PROTOCOL_VERSION;
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;

fn lsn(case: &Case, key: &str) -> Lsn {
    case.arg(key)
        .parse()
        .unwrap_or_else(|_| panic!("line {}: {key}= is not an LSN", case.line))
}

fn opt_lsn(case: &Case, key: &str) -> Lsn {
    case.opt(key).map_or(Lsn::INVALID, |_| lsn(case, key))
}

fn term(case: &Case) -> u64 {
    case.arg("term").parse().expect("term=N")
}

fn history(case: &Case) -> TermHistory {
    TermHistory(
        case.arg("history")
            .split(',')
            .map(|e| {
                let (t, l) = e.split_once('@').expect("history=T@LSN,..");
                TermLsn {
                    term: t.parse().expect("a term"),
                    lsn: l.parse().expect("an LSN"),
                }
            })
            .collect(),
    )
}

fn greeting(case: &Case, members: &Members, start: Lsn, create: bool) -> Greeting {
    Greeting {
        conf: None,
        protocol_version: PROTOCOL_VERSION,
        ttid: Ttid::default(),
        server: ServerInfo {
            system_id: case
                .opt("system")
                .map_or(42, |s| s.parse().expect("system=N")),
            pg_version: 150018,
            wal_seg_size: 16 << 20,
            tli: 1,
        },
        timeline_start_lsn: start,
        members: members.clone(),
        proposer_id: [7; 16],
        create,
        pg_ancestors: Vec::new(),
    }
}

fn print_history(h: &TermHistory) -> String {
    let entries: Vec<String> =
        h.0.iter()
            .map(|e| format!("{}@{}", e.term, e.lsn))
            .collect();
    entries.join(",")
}

fn print_state(s: &TimelineState) -> String {
    format!(
        "term={} history={} flush={} commit={} local_start={} peer={} slots={}",
        s.term,
        print_history(&s.term_history),
        s.flush_lsn,
        s.commit_lsn,
        s.local_start_lsn,
        s.peer_horizon_lsn,
        s.slot_horizon_lsn
    )
}

fn print_ready(r: &Ready) -> String {
    let mut out = format!(
        "ready {}: {} waits_for={}{}",
        r.seq,
        if r.sync { "sync" } else { "lazy" },
        r.waits_for,
        if r.holds_reply { " holds a reply" } else { "" }
    );
    for w in &r.writes {
        out.push_str("\n  ");
        out.push_str(&match w {
            Write::AppendWal { begin, bytes } => format!("append wal {begin} +{}", bytes.len()),
            Write::TruncateWal { from } => format!("truncate wal from {from}"),
            Write::TrimWal { below } => format!("trim wal below {below}"),
            Write::PutState(s) => format!("put state {}", print_state(s)),
        });
    }
    for e in &r.events {
        out.push_str(&format!("\n  event {e:?}"));
    }
    out
}

fn print_reply(r: &Reply) -> String {
    let body = match &r.msg {
        AcceptorMessage::Greeting(g) => format!(
            "greeting node={} term={} generation={}",
            g.node_id, g.term, g.conf.generation
        ),
        AcceptorMessage::Vote(v) => format!(
            "vote term={} {} flush={} commit={} history={}",
            v.term,
            if v.granted { "granted" } else { "refused" },
            v.flush_lsn,
            v.commit_lsn,
            print_history(&v.term_history)
        ),
        AcceptorMessage::Append(a) => format!(
            "append term={} flush={} commit={} slots={} local_start={}",
            a.term, a.flush_lsn, a.commit_lsn, a.slot_horizon_lsn, a.local_start_lsn
        ),
    };
    format!("reply {}: {body}", r.seq)
}

/// One script's acceptor and the members it was created with.
#[derive(Default)]
struct Run {
    acceptor: Option<Acceptor>,
    members: Members,
    start: Lsn,
}

impl Run {
    fn acceptor(&mut self) -> &mut Acceptor {
        self.acceptor.as_mut().expect("`create` comes first")
    }

    fn handle(&mut self, msg: ProposerMessage) -> String {
        match self.acceptor().handle(&msg) {
            Ok(r) => print_ready(&r),
            Err(e) => format!("refused: {e}"),
        }
    }

    fn step(&mut self, case: &Case) -> String {
        match case.cmd.as_str() {
            "create" => {
                self.members = case
                    .numbers("members")
                    .into_iter()
                    .map(|n| (NodeId(n), format!("sk{n}:5454")))
                    .collect();
                self.start = lsn(case, "start");
                let g = greeting(case, &self.members, self.start, true);
                match Acceptor::create(NodeId(1), &g) {
                    Ok((a, r)) => {
                        self.acceptor = Some(a);
                        print_ready(&r)
                    }
                    Err(e) => format!("refused: {e}"),
                }
            }
            "greet" => {
                let g = greeting(case, &self.members.clone(), self.start, false);
                self.handle(ProposerMessage::Greeting(g))
            }
            "vote" => self.handle(ProposerMessage::VoteRequest(VoteRequest::new(term(case)))),
            "elected" => self.handle(ProposerMessage::Elected(Elected {
                term: term(case),
                start_streaming_at: lsn(case, "at"),
                term_history: history(case),
                pg_tli: 0,
                pg_ancestors: Vec::new(),
            })),
            "append" => {
                let begin = lsn(case, "begin");
                let len: u64 = case.arg("len").parse().expect("len=N");
                self.handle(ProposerMessage::Append(AppendRequest {
                    term: term(case),
                    begin_lsn: begin,
                    end_lsn: Lsn(begin.0 + len),
                    commit_lsn: lsn(case, "commit"),
                    peer_horizon_lsn: opt_lsn(case, "peer"),
                    slot_horizon_lsn: opt_lsn(case, "slots"),
                    wal: Bytes::from(vec![0x5a; len as usize]),
                }))
            }
            "persisted" => {
                let seq = case.arg("seq").parse().expect("seq=N");
                let out: Vec<String> = self
                    .acceptor()
                    .on_persisted(seq)
                    .iter()
                    .map(print_reply)
                    .collect();
                if out.is_empty() {
                    "nothing released".to_string()
                } else {
                    out.join("\n")
                }
            }
            "trim" => match self.acceptor().trim(lsn(case, "below")) {
                Some(r) => print_ready(&r),
                None => "nothing to trim".to_string(),
            },
            "settle" => match self.acceptor().settle(term(case), lsn(case, "at")) {
                Ok(r) => print_ready(&r),
                Err(e) => format!("refused: {e}"),
            },
            "slot-horizon" => {
                self.acceptor().set_slot_horizon(lsn(case, "at"));
                "ok".to_string()
            }
            "fail" => {
                self.acceptor().on_storage_failed("injected");
                "failed".to_string()
            }
            "state" => print_state(self.acceptor().state()),
            other => panic!("line {}: unknown command {other}", case.line),
        }
    }
}

fn run_script(name: &str) {
    let mut run = Run::default();
    run_file(name, |case| run.step(case));
}

#[test]
fn acceptor_elections() {
    run_script("acceptor_elections.txt");
}

#[test]
fn acceptor_replies_wait_for_persistence() {
    run_script("acceptor_replies.txt");
}
