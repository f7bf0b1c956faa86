//! Structure-aware inputs: proposer and acceptor messages built from fuzz
//! bytes with `arbitrary`. Sizes are drawn by magnitude and contents are
//! filled by pattern, so a few input bytes reach values at and past the
//! limits of `consensus::limits` and the codec (thousands of history
//! entries, addresses of hundreds of bytes) as well as small ones.

use arbitrary::{Result, Unstructured};
use bytes::Bytes;

use crate::codec::{MAX_STRUCT_SIZE, PROTOCOL_VERSION};
use crate::consensus::limits::{MAX_MEMBERS, MAX_MEMBER_ADDRESS_LEN, MAX_TERM_HISTORY};
use crate::consensus::messages::*;
use crate::consensus::term_history::{Term, TermHistory, TermLsn};
use crate::id::{NodeId, TenantId, TimelineId, Ttid};
use crate::lsn::Lsn;

/// A length: mostly small, sometimes anywhere up to `max`, sometimes
/// right at `limit` or just past it, sometimes just under `max` (where
/// `max` is what the codec can carry, so the value still crosses the wire
/// but leaves little room for anything stored around it).
pub(crate) fn len(u: &mut Unstructured, limit: usize, max: usize) -> Result<usize> {
    Ok(match u.int_in_range(0..=8u8)? {
        0..=3 => u.int_in_range(0..=4usize.min(max))?,
        4 => u.int_in_range(0..=max)?,
        5 => limit,
        6 => (limit + 1).min(max),
        7 => u.int_in_range(limit.saturating_sub(2)..=(limit + 2).min(max))?,
        _ => max - u.int_in_range(0..=max / 2048)?,
    })
}

/// A 64-bit value near `base`: equal, a little above or below, or anywhere
/// (including the ends of the range).
pub(crate) fn near(u: &mut Unstructured, base: u64) -> Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0..=2 => base,
        3 => base.saturating_add(u.int_in_range(1..=4)?),
        4 => base.saturating_sub(u.int_in_range(1..=4)?),
        5 => u64::MAX - u.int_in_range(0..=4u64)?,
        6 => base.saturating_add(u.int_in_range(0..=1u64 << 33)?),
        _ => u.arbitrary()?,
    })
}

pub(crate) fn lsn(u: &mut Unstructured, base: Lsn) -> Result<Lsn> {
    near(u, base.0).map(Lsn)
}

pub(crate) fn ttid(u: &mut Unstructured) -> Result<Ttid> {
    if u.ratio(7, 8)? {
        return Ok(Ttid::default());
    }
    Ok(Ttid::new(
        TenantId(u.arbitrary()?),
        TimelineId(u.arbitrary()?),
    ))
}

/// What the sessions' timeline is: 16 MiB segments, starting at the second.
pub(crate) const SERVER: ServerInfo = ServerInfo {
    system_id: 1,
    pg_version: 150000,
    wal_seg_size: 1 << 24,
    tli: 1,
};
pub(crate) const TIMELINE_START: Lsn = Lsn(1 << 24);

fn server(u: &mut Unstructured) -> Result<ServerInfo> {
    if u.ratio(7, 8)? {
        return Ok(SERVER);
    }
    Ok(ServerInfo {
        system_id: u.arbitrary()?,
        pg_version: u.arbitrary()?,
        wal_seg_size: if u.arbitrary()? {
            1 << u.int_in_range(18..=31)?
        } else {
            u.arbitrary()?
        },
        tli: u.arbitrary()?,
    })
}

/// Members 1, 2, 3, … (sometimes other ids); the first address of a drawn
/// length up to the size of a whole message, so an address that fits the
/// wire but not the store is reached.
pub(crate) fn members(u: &mut Unstructured) -> Result<Members> {
    let n = len(u, MAX_MEMBERS, 2 * MAX_MEMBERS)?;
    let addr_len = len(u, MAX_MEMBER_ADDRESS_LEN, MAX_STRUCT_SIZE as usize)?;
    let mut out = Members::new();
    for i in 0..n as u64 {
        let id = if u.ratio(15, 16)? {
            i + 1
        } else {
            u.arbitrary()?
        };
        let port = format!("h{i}:5454");
        let pad = if i == 0 { addr_len } else { 0 };
        let addr = "a".repeat(pad.saturating_sub(port.len())) + &port;
        out.insert(NodeId(id), addr);
    }
    Ok(out)
}

/// A term history: well formed (terms increasing, LSNs not decreasing)
/// unless drawn otherwise, of a drawn length. Given `last`, it ends there:
/// the entries before it count down from it (as many as its term allows).
pub(crate) fn history(u: &mut Unstructured, last: Option<TermLsn>) -> Result<TermHistory> {
    // 16 bytes an entry: at most a whole message of them.
    let mut n = len(u, MAX_TERM_HISTORY, MAX_STRUCT_SIZE as usize / 16)?;
    let term_step: u64 = u.int_in_range(1..=3)?;
    let lsn_step: u64 = u.int_in_range(0..=8192)?;
    let end = match last {
        Some(e) => {
            n = n.min((e.term / term_step) as usize);
            e
        }
        None => TermLsn {
            term: (n as u64 + 1) * term_step + u.int_in_range(0..=3)?,
            lsn: Lsn(TIMELINE_START.0 + (n as u64 + 1) * lsn_step),
        },
    };
    let mut entries: Vec<TermLsn> = (1..=n as u64)
        .rev()
        .map(|back| TermLsn {
            term: end.term - back * term_step,
            lsn: Lsn(end.lsn.0.saturating_sub(back * lsn_step)),
        })
        .collect();
    if last.is_some() {
        entries.push(end);
    }
    if !entries.is_empty() && u.ratio(1, 16)? {
        let i = u.choose_index(entries.len())?;
        entries[i] = TermLsn {
            term: u.arbitrary()?,
            lsn: Lsn(u.arbitrary()?),
        };
    }
    Ok(TermHistory(entries))
}

pub(crate) fn wal(u: &mut Unstructured) -> Result<Bytes> {
    let n = len(u, 64, 4096)?;
    let fill: u8 = u.arbitrary()?;
    Ok(Bytes::from(vec![fill; n]))
}

/// PostgreSQL timeline ancestors: mostly none, sometimes a list of
/// arbitrary switch points.
pub(crate) fn pg_ancestors(
    u: &mut Unstructured,
) -> Result<crate::consensus::pg_timeline::PgAncestors> {
    let n = if u.ratio(3, 4)? {
        0
    } else {
        u.int_in_range(0..=40u32)?
    };
    (0..n)
        .map(|_| Ok((u.arbitrary()?, Lsn(u.arbitrary()?))))
        .collect()
}

/// A PostgreSQL timeline: mostly 1.
pub(crate) fn pg_tli(u: &mut Unstructured) -> Result<u32> {
    if u.ratio(7, 8)? {
        Ok(1)
    } else {
        u.arbitrary()
    }
}

pub(crate) fn greeting(u: &mut Unstructured) -> Result<Greeting> {
    Ok(Greeting {
        conf: None,
        protocol_version: if u.ratio(15, 16)? {
            PROTOCOL_VERSION
        } else {
            u.arbitrary()?
        },
        ttid: ttid(u)?,
        server: server(u)?,
        timeline_start_lsn: if u.ratio(7, 8)? {
            TIMELINE_START
        } else {
            Lsn(u.arbitrary()?)
        },
        members: members(u)?,
        proposer_id: u.arbitrary()?,
        create: u.arbitrary()?,
        pg_ancestors: pg_ancestors(u)?,
    })
}

pub(crate) fn append(u: &mut Unstructured, term: Term, begin: Lsn) -> Result<AppendRequest> {
    let wal = wal(u)?;
    // The codec refuses a range that does not match the WAL: keep it valid.
    let begin = Lsn(lsn(u, begin)?.0.min(u64::MAX - wal.len() as u64));
    Ok(AppendRequest {
        term: near(u, term)?,
        begin_lsn: begin,
        end_lsn: Lsn(begin.0 + wal.len() as u64),
        commit_lsn: lsn(u, begin)?,
        peer_horizon_lsn: lsn(u, begin)?,
        slot_horizon_lsn: lsn(u, begin)?,
        wal,
    })
}

/// Any proposer message, its fields drawn around `term` and `lsn`.
pub(crate) fn proposer_message(
    u: &mut Unstructured,
    term: Term,
    at: Lsn,
) -> Result<ProposerMessage> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => ProposerMessage::Greeting(greeting(u)?),
        1 => ProposerMessage::VoteRequest(VoteRequest::new(near(u, term)?)),
        2 => {
            let term = near(u, term)?;
            let start = lsn(u, at)?;
            ProposerMessage::Elected(Elected {
                term,
                start_streaming_at: start,
                term_history: history(u, Some(TermLsn { term, lsn: start }))?,
                pg_tli: pg_tli(u)?,
                pg_ancestors: pg_ancestors(u)?,
            })
        }
        3 => ProposerMessage::Append(append(u, term, at)?),
        _ => ProposerMessage::Reseed(Reseed {
            term: near(u, term)?,
            start_lsn: lsn(u, at)?,
        }),
    })
}

/// Any acceptor message, as a hostile or broken safekeeper could send.
pub(crate) fn acceptor_message(
    u: &mut Unstructured,
    node: NodeId,
    term: Term,
    at: Lsn,
) -> Result<AcceptorMessage> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => AcceptorMessage::Greeting(AcceptorGreeting {
            protocol_version: if u.ratio(15, 16)? {
                PROTOCOL_VERSION
            } else {
                u.arbitrary()?
            },
            node_id: if u.ratio(7, 8)? {
                node
            } else {
                NodeId(u.arbitrary()?)
            },
            term: near(u, term)?,
            conf: crate::consensus::membership::Configuration::initial(Default::default()),
        }),
        1 => AcceptorMessage::Vote(VoteResponse {
            term: near(u, term)?,
            granted: u.arbitrary()?,
            flush_lsn: lsn(u, at)?,
            commit_lsn: lsn(u, at)?,
            term_history: history(u, None)?,
            timeline_start_lsn: lsn(u, TIMELINE_START)?,
            tli: pg_tli(u)?,
            pg_ancestors: pg_ancestors(u)?,
        }),
        _ => AcceptorMessage::Append(AppendResponse {
            term: near(u, term)?,
            flush_lsn: lsn(u, at)?,
            commit_lsn: lsn(u, at)?,
            slot_horizon_lsn: lsn(u, at)?,
            local_start_lsn: lsn(u, TIMELINE_START)?,
        }),
    })
}
