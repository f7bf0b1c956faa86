//! Which push connection of a proposer a timeline hears (issue 18).
//!
//! A proxy that gave up on a connection (no reply in time) opens a new one
//! and speaks only there; bytes of the old one may still arrive late (a
//! link back after a partition delivers what TCP kept retrying). The newest
//! connection of a proposer id claims the timeline at its vote request, and
//! every message of that proposer's earlier connections is refused from
//! then on, so they cannot move the log under the new one's feet. The
//! daemon (`safekeeper::timelines`) and the simulation both run this rule;
//! the daemon answers a refusal with SQLSTATE 55000.

use std::collections::BTreeMap;

use crate::consensus::messages::ProposerMessage;

/// One push connection as the claim rule sees it: the proposer id its
/// greeting gave (None before the greeting, or not a push connection) and
/// its number, in the order the node accepted connections. A proxy opens a
/// new connection only after it gave up on the old one, so a higher number
/// is a newer connection of that proposer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim {
    pub proposer_id: Option<[u8; 16]>,
    pub conn: u64,
}

/// A message of a connection that a newer connection of the same proposer
/// replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a newer connection of the same proposer replaced this one")]
pub struct Superseded;

/// The newest claiming connection per proposer id on one timeline (in
/// memory: a restart closes every connection, so none survives it).
#[derive(Debug, Clone, Default)]
pub struct Claims {
    newest: BTreeMap<[u8; 16], u64>,
}

impl Claims {
    /// The rule for one message `msg` of connection `claim` (its proposer
    /// id recorded from a greeting first): a message of a connection older
    /// than the newest one of its proposer that claimed the timeline is
    /// refused; a vote request claims the timeline for its connection, so
    /// whatever an earlier connection of this proposer still delivers is
    /// refused from there on (the vote says where the log ends, and this
    /// connection's Elected and appends start there). An older connection
    /// cannot claim back, also if its own vote request arrives late.
    pub fn on_message(
        &mut self,
        msg: &ProposerMessage,
        claim: &mut Claim,
    ) -> Result<(), Superseded> {
        if let ProposerMessage::Greeting(g) = msg {
            claim.proposer_id = Some(g.proposer_id);
        }
        let Some(id) = claim.proposer_id else {
            return Ok(());
        };
        let newest = self.newest.get(&id).copied().unwrap_or(0);
        if claim.conn < newest {
            return Err(Superseded);
        }
        if matches!(msg, ProposerMessage::VoteRequest(_)) && claim.conn > newest {
            self.newest.insert(id, claim.conn);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::messages::{Greeting, ServerInfo, VoteRequest};

    fn vote() -> ProposerMessage {
        ProposerMessage::VoteRequest(VoteRequest {
            term: 1,
            generation: Default::default(),
        })
    }

    fn greeting(id: u8) -> ProposerMessage {
        ProposerMessage::Greeting(Greeting {
            protocol_version: crate::codec::PROTOCOL_VERSION,
            ttid: Default::default(),
            server: ServerInfo {
                system_id: 42,
                pg_version: 150018,
                wal_seg_size: 16 << 20,
                tli: 1,
            },
            timeline_start_lsn: crate::lsn::Lsn(0x0100_0000),
            members: Default::default(),
            proposer_id: [id; 16],
            create: false,
            pg_ancestors: Vec::new(),
            conf: None,
        })
    }

    #[test]
    fn a_newer_claim_refuses_the_older_connection() {
        let mut claims = Claims::default();
        let mut old = Claim {
            proposer_id: None,
            conn: 1,
        };
        let mut new = Claim {
            proposer_id: None,
            conn: 2,
        };
        claims.on_message(&greeting(1), &mut old).unwrap();
        claims.on_message(&vote(), &mut old).unwrap();
        claims.on_message(&greeting(1), &mut new).unwrap();
        // Until the new connection votes, the old one is heard.
        claims.on_message(&vote(), &mut old).unwrap();
        claims.on_message(&vote(), &mut new).unwrap();
        assert_eq!(claims.on_message(&vote(), &mut old), Err(Superseded));
        assert_eq!(claims.on_message(&greeting(1), &mut old), Err(Superseded));
        assert_eq!(claims.on_message(&vote(), &mut new), Ok(()));
    }

    #[test]
    fn an_older_connection_cannot_claim_back_with_a_late_vote() {
        let mut claims = Claims::default();
        let mut old = Claim {
            proposer_id: None,
            conn: 1,
        };
        let mut new = Claim {
            proposer_id: None,
            conn: 2,
        };
        claims.on_message(&greeting(1), &mut old).unwrap();
        claims.on_message(&greeting(1), &mut new).unwrap();
        claims.on_message(&vote(), &mut new).unwrap();
        assert_eq!(claims.on_message(&vote(), &mut old), Err(Superseded));
        assert_eq!(claims.on_message(&vote(), &mut new), Ok(()));
    }

    #[test]
    fn other_proposers_and_unnamed_connections_are_heard() {
        let mut claims = Claims::default();
        let mut a = Claim {
            proposer_id: None,
            conn: 1,
        };
        let mut b = Claim {
            proposer_id: None,
            conn: 2,
        };
        let mut unnamed = Claim {
            proposer_id: None,
            conn: 0,
        };
        claims.on_message(&greeting(1), &mut a).unwrap();
        claims.on_message(&greeting(2), &mut b).unwrap();
        claims.on_message(&vote(), &mut b).unwrap();
        assert_eq!(claims.on_message(&vote(), &mut a), Ok(()));
        assert_eq!(claims.on_message(&vote(), &mut unnamed), Ok(()));
    }
}
