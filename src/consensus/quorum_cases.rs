//! The majority rules as data (`testdata/quorum.txt`), in raft-rs's
//! `quorum/testdata` habit: plain majorities and joint configurations,
//! for votes and for the commit position.
//!
//! Commands (node ids and LSNs as plain numbers):
//! - `majority members=N` prints how many of N make a majority.
//! - `vote members=1,2,3 [next=3,4,5] granted=1,3` prints `won` or `lost`.
//! - `committed members=.. [next=..] flush=id:lsn,.. [floor=L] [new-alone]`
//!   prints the commit position or `none`.

use std::collections::{BTreeMap, BTreeSet};

use super::membership::{Configuration, Generation};
use super::messages::Members;
use super::quorum;
use super::script::{run_file, Case};
use crate::id::NodeId;
use crate::lsn::Lsn;

fn members(case: &Case, key: &str) -> Members {
    case.numbers(key)
        .into_iter()
        .map(|n| (NodeId(n), format!("node{n}:5454")))
        .collect()
}

fn configuration(case: &Case) -> Configuration {
    Configuration {
        generation: Generation::INITIAL,
        members: members(case, "members"),
        next: case.opt("next").map(|_| members(case, "next")),
    }
}

fn run(case: &Case) -> String {
    match case.cmd.as_str() {
        "majority" => {
            let n = case.arg("members").parse().expect("members=N");
            quorum::majority(n).to_string()
        }
        "vote" => {
            let granted: BTreeSet<NodeId> =
                case.numbers("granted").into_iter().map(NodeId).collect();
            let won = configuration(case).is_quorum(&granted);
            if won { "won" } else { "lost" }.to_string()
        }
        "committed" => {
            let flush: BTreeMap<NodeId, Lsn> = case
                .pairs("flush")
                .into_iter()
                .map(|(n, l)| (NodeId(n), Lsn(l)))
                .collect();
            let floor = Lsn(case.opt("floor").map_or(0, |f| f.parse().expect("floor=L")));
            match configuration(case).commit_lsn(&flush, floor, case.flag("new-alone")) {
                Some(l) => l.0.to_string(),
                None => "none".to_string(),
            }
        }
        other => panic!("line {}: unknown command {other}", case.line),
    }
}

#[test]
fn quorum_rules() {
    run_file("quorum.txt", run);
}
