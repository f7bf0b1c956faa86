//! The one place that turns values into bytes and back: proposer/acceptor
//! wire messages and every stored value. bincode is unmaintained, so nothing
//! else in the crate names it; swapping it means changing this file (and the
//! versions in `schema/`).
//!
//! Wire message: `tag u8 ‖ bincode(body)`; an AppendRequest carries its WAL
//! bytes raw after the body, so they are never re-encoded. Stored value:
//! `format u16 (big-endian) ‖ bincode(value)`. bincode is configured with
//! fixed-width little-endian integers, a size limit (so a hostile length
//! prefix cannot allocate gigabytes) and no trailing bytes.

use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::consensus::messages::*;
use crate::consensus::term_history::Term;
use crate::lsn::Lsn;

/// Version of the proposer/acceptor protocol (schema/wire-messages.md).
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest WAL payload of one AppendRequest; the decoder refuses more.
pub const MAX_APPEND_WAL: usize = 1 << 20;

/// Largest encoded message, WAL included. Anything longer is refused before
/// it is decoded.
pub const MAX_MESSAGE_SIZE: usize = MAX_APPEND_WAL + 64 * 1024;

/// Limit for the bincode part of a message or stored value. What the
/// acceptor stores is kept within it by `consensus::limits`.
pub const MAX_STRUCT_SIZE: u64 = 1 << 20;

const TAG_GREETING: u8 = b'g';
const TAG_VOTE_REQUEST: u8 = b'v';
const TAG_ELECTED: u8 = b'e';
const TAG_APPEND_REQUEST: u8 = b'a';
const TAG_RESEED: u8 = b'r';
const TAG_CONFIGURE: u8 = b'c';
const TAG_ACCEPTOR_GREETING: u8 = b'G';
const TAG_VOTE_RESPONSE: u8 = b'V';
const TAG_APPEND_RESPONSE: u8 = b'A';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty message")]
    Empty,
    #[error("unknown message tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_SIZE} bytes")]
    TooLarge(usize),
    #[error("AppendRequest with {0} WAL bytes exceeds the limit of {MAX_APPEND_WAL} bytes")]
    AppendTooLarge(usize),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{what} cannot be stored: {detail}")]
    Unencodable { what: &'static str, detail: String },
    /// A greeting of another wire protocol version: the peer runs another
    /// release (its layout may differ, so nothing else is read).
    #[error("the peer speaks walkeeper wire protocol {found}, this build speaks {PROTOCOL_VERSION}: run safekeeper-proxy and the safekeepers from releases with the same protocol (schema/wire-messages.md)")]
    OtherProtocol { found: u32 },
    #[error("{what} has format version {found}, this build knows {known}")]
    UnknownVersion {
        what: &'static str,
        found: u16,
        known: u16,
    },
}

fn opts() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_STRUCT_SIZE)
}

/// A message body. Encoded without the size limit: a message too large for
/// its peer is refused by the peer's decoder, never a panic here.
fn body<T: Serialize>(out: &mut BytesMut, v: &T) {
    // Serialising our own plain structs (fixed-width integers, strings,
    // vectors and maps, all of known length) into memory with no size limit
    // cannot fail.
    let bytes = opts()
        .with_no_limit()
        .serialize(v)
        .expect("bincode serialises plain structs without a size limit");
    out.put_slice(&bytes);
}

/// Both greetings start with the protocol version (u32, little-endian), in
/// every version: read it before the rest, whose layout it decides.
fn check_protocol(greeting: &[u8]) -> Result<(), CodecError> {
    match greeting.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) {
        Some(found) if found != PROTOCOL_VERSION => Err(CodecError::OtherProtocol { found }),
        _ => Ok(()),
    }
}

fn parse<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    // bincode ignores the size limit when it reads from a slice (the slice
    // bounds what it can allocate): the limit on bodies is checked here.
    if bytes.len() as u64 > MAX_STRUCT_SIZE {
        return Err(CodecError::Malformed {
            what,
            detail: format!(
                "{} bytes, above the limit of {MAX_STRUCT_SIZE}",
                bytes.len()
            ),
        });
    }
    opts()
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|e| CodecError::Malformed {
            what,
            detail: e.to_string(),
        })
}

/// Parse a value at the front of `bytes`; returns it and how many bytes it took.
fn parse_prefix<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<(T, usize), CodecError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let v = opts()
        .allow_trailing_bytes()
        .deserialize_from(&mut cursor)
        .map_err(|e| CodecError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    Ok((v, cursor.position() as usize))
}

#[derive(Serialize, Deserialize)]
struct AppendHeader {
    term: Term,
    begin_lsn: Lsn,
    end_lsn: Lsn,
    commit_lsn: Lsn,
    peer_horizon_lsn: Lsn,
    slot_horizon_lsn: Lsn,
    wal_len: u32,
}

pub fn encode_proposer_message(msg: &ProposerMessage) -> Bytes {
    let mut out = BytesMut::new();
    match msg {
        ProposerMessage::Greeting(m) => {
            out.put_u8(TAG_GREETING);
            body(&mut out, m);
        }
        ProposerMessage::VoteRequest(m) => {
            out.put_u8(TAG_VOTE_REQUEST);
            body(&mut out, m);
        }
        ProposerMessage::Elected(m) => {
            out.put_u8(TAG_ELECTED);
            body(&mut out, m);
        }
        ProposerMessage::Append(m) => {
            out.reserve(64 + m.wal.len());
            out.put_u8(TAG_APPEND_REQUEST);
            body(
                &mut out,
                &AppendHeader {
                    term: m.term,
                    begin_lsn: m.begin_lsn,
                    end_lsn: m.end_lsn,
                    commit_lsn: m.commit_lsn,
                    peer_horizon_lsn: m.peer_horizon_lsn,
                    slot_horizon_lsn: m.slot_horizon_lsn,
                    wal_len: m.wal.len() as u32,
                },
            );
            out.put_slice(&m.wal);
        }
        ProposerMessage::Reseed(m) => {
            out.put_u8(TAG_RESEED);
            body(&mut out, m);
        }
        ProposerMessage::Configure(m) => {
            out.put_u8(TAG_CONFIGURE);
            body(&mut out, m);
        }
    }
    out.freeze()
}

/// Decode a proposer message. `bytes` is taken as `Bytes` so the WAL of an
/// AppendRequest is a zero-copy slice of it.
pub fn decode_proposer_message(bytes: &Bytes) -> Result<ProposerMessage, CodecError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (&tag, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    Ok(match tag {
        TAG_GREETING => {
            check_protocol(rest)?;
            ProposerMessage::Greeting(parse("Greeting", rest)?)
        }
        TAG_VOTE_REQUEST => ProposerMessage::VoteRequest(parse("VoteRequest", rest)?),
        TAG_ELECTED => ProposerMessage::Elected(parse("Elected", rest)?),
        TAG_RESEED => ProposerMessage::Reseed(parse("Reseed", rest)?),
        TAG_CONFIGURE => ProposerMessage::Configure(parse("Configure", rest)?),
        TAG_APPEND_REQUEST => {
            let (h, used): (AppendHeader, usize) = parse_prefix("AppendRequest", rest)?;
            let wal_start = 1 + used;
            let wal_len = bytes.len() - wal_start;
            let malformed = |detail: String| CodecError::Malformed {
                what: "AppendRequest",
                detail,
            };
            if wal_len > MAX_APPEND_WAL {
                return Err(CodecError::AppendTooLarge(wal_len));
            }
            if wal_len != h.wal_len as usize {
                return Err(malformed(format!(
                    "header announces {} WAL bytes, message carries {wal_len}",
                    h.wal_len
                )));
            }
            if h.end_lsn.0.checked_sub(h.begin_lsn.0) != Some(wal_len as u64) {
                return Err(malformed(format!(
                    "range {}..{} does not match {wal_len} WAL bytes",
                    h.begin_lsn, h.end_lsn
                )));
            }
            ProposerMessage::Append(AppendRequest {
                term: h.term,
                begin_lsn: h.begin_lsn,
                end_lsn: h.end_lsn,
                commit_lsn: h.commit_lsn,
                peer_horizon_lsn: h.peer_horizon_lsn,
                slot_horizon_lsn: h.slot_horizon_lsn,
                wal: bytes.slice(wal_start..),
            })
        }
        other => return Err(CodecError::UnknownTag(other)),
    })
}

pub fn encode_acceptor_message(msg: &AcceptorMessage) -> Bytes {
    let mut out = BytesMut::new();
    match msg {
        AcceptorMessage::Greeting(m) => {
            out.put_u8(TAG_ACCEPTOR_GREETING);
            body(&mut out, m);
        }
        AcceptorMessage::Vote(m) => {
            out.put_u8(TAG_VOTE_RESPONSE);
            body(&mut out, m);
        }
        AcceptorMessage::Append(m) => {
            out.put_u8(TAG_APPEND_RESPONSE);
            body(&mut out, m);
        }
    }
    out.freeze()
}

pub fn decode_acceptor_message(bytes: &[u8]) -> Result<AcceptorMessage, CodecError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (&tag, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    Ok(match tag {
        TAG_ACCEPTOR_GREETING => {
            check_protocol(rest)?;
            AcceptorMessage::Greeting(parse("AcceptorGreeting", rest)?)
        }
        TAG_VOTE_RESPONSE => AcceptorMessage::Vote(parse("VoteResponse", rest)?),
        TAG_APPEND_RESPONSE => AcceptorMessage::Append(parse("AppendResponse", rest)?),
        other => return Err(CodecError::UnknownTag(other)),
    })
}

/// A stored value type with its own format version (schema/store.md).
pub trait Versioned: Serialize + DeserializeOwned {
    const WHAT: &'static str;
    const FORMAT_VERSION: u16;
}

/// A stored value, or an error when it exceeds [`MAX_STRUCT_SIZE`] (the
/// limit `decode_stored` reads back with): an error of the write that
/// carries it, never a panic of the thread that writes.
pub fn encode_stored<T: Versioned>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = opts()
        .serialize(value)
        .map_err(|e| CodecError::Unencodable {
            what: T::WHAT,
            detail: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.extend_from_slice(&T::FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(out)
}

pub fn decode_stored<T: Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < 2 {
        return Err(CodecError::Malformed {
            what: T::WHAT,
            detail: format!("{} bytes, too short for a format version", bytes.len()),
        });
    }
    let version = u16::from_be_bytes([bytes[0], bytes[1]]);
    if version != T::FORMAT_VERSION {
        return Err(CodecError::UnknownVersion {
            what: T::WHAT,
            found: version,
            known: T::FORMAT_VERSION,
        });
    }
    parse(T::WHAT, &bytes[2..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::term_history::{TermHistory, TermLsn};
    use crate::id::{NodeId, TenantId, TimelineId, Ttid};

    fn greeting() -> Greeting {
        Greeting {
            conf: None,
            protocol_version: PROTOCOL_VERSION,
            ttid: Ttid::new(TenantId([1; 16]), TimelineId([2; 16])),
            server: ServerInfo {
                system_id: 7_300_000_000_000_000_001,
                pg_version: 150018,
                wal_seg_size: 16 << 20,
                tli: 1,
            },
            timeline_start_lsn: Lsn(0x100_0000),
            members: [
                (NodeId(1), "127.0.0.1:5454".to_string()),
                (NodeId(2), "h:1".into()),
            ]
            .into_iter()
            .collect(),
            proposer_id: [9; 16],
            create: true,
            pg_ancestors: Vec::new(),
        }
    }

    fn history() -> TermHistory {
        TermHistory(vec![
            TermLsn {
                term: 1,
                lsn: Lsn(10),
            },
            TermLsn {
                term: 4,
                lsn: Lsn(99),
            },
        ])
    }

    fn proposer_messages() -> Vec<ProposerMessage> {
        vec![
            ProposerMessage::Greeting(greeting()),
            ProposerMessage::VoteRequest(VoteRequest::new(5)),
            ProposerMessage::Elected(Elected {
                term: 5,
                start_streaming_at: Lsn(77),
                term_history: history(),
                pg_tli: 0,
                pg_ancestors: Vec::new(),
            }),
            ProposerMessage::Append(AppendRequest {
                term: 5,
                begin_lsn: Lsn(100),
                end_lsn: Lsn(105),
                commit_lsn: Lsn(90),
                peer_horizon_lsn: Lsn(50),
                slot_horizon_lsn: Lsn(40),
                wal: Bytes::from_static(b"hello"),
            }),
            ProposerMessage::Append(AppendRequest {
                term: 5,
                begin_lsn: Lsn(105),
                end_lsn: Lsn(105),
                commit_lsn: Lsn(105),
                peer_horizon_lsn: Lsn::INVALID,
                slot_horizon_lsn: Lsn::INVALID,
                wal: Bytes::new(),
            }),
            ProposerMessage::Reseed(Reseed {
                term: 5,
                start_lsn: Lsn(1 << 24),
            }),
        ]
    }

    fn acceptor_messages() -> Vec<AcceptorMessage> {
        vec![
            AcceptorMessage::Greeting(AcceptorGreeting {
                protocol_version: PROTOCOL_VERSION,
                node_id: NodeId(3),
                term: 4,
                conf: crate::consensus::membership::Configuration::initial(Default::default()),
            }),
            AcceptorMessage::Vote(VoteResponse {
                term: 5,
                granted: true,
                flush_lsn: Lsn(100),
                commit_lsn: Lsn(90),
                term_history: history(),
                timeline_start_lsn: Lsn(10),
                tli: 1,
                pg_ancestors: Vec::new(),
            }),
            AcceptorMessage::Append(AppendResponse {
                term: 5,
                flush_lsn: Lsn(105),
                commit_lsn: Lsn(100),
                slot_horizon_lsn: Lsn::INVALID,
                local_start_lsn: Lsn(16),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in proposer_messages() {
            let bytes = encode_proposer_message(&m);
            assert_eq!(decode_proposer_message(&bytes).unwrap(), m);
        }
        for m in acceptor_messages() {
            let bytes = encode_acceptor_message(&m);
            assert_eq!(decode_acceptor_message(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for m in proposer_messages() {
            let bytes = encode_proposer_message(&m);
            for n in 0..bytes.len() {
                assert!(
                    decode_proposer_message(&bytes.slice(..n)).is_err(),
                    "{m:?} cut at {n} decoded"
                );
            }
        }
        for m in acceptor_messages() {
            let bytes = encode_acceptor_message(&m);
            for n in 0..bytes.len() {
                assert!(
                    decode_acceptor_message(&bytes[..n]).is_err(),
                    "{m:?} cut at {n}"
                );
            }
        }
    }

    #[test]
    fn trailing_garbage_and_unknown_tags_are_errors() {
        for m in proposer_messages()
            .into_iter()
            .filter(|m| !matches!(m, ProposerMessage::Append(_)))
        {
            let mut bytes = encode_proposer_message(&m).to_vec();
            bytes.push(0);
            assert!(decode_proposer_message(&Bytes::from(bytes)).is_err());
        }
        assert_eq!(
            decode_proposer_message(&Bytes::from_static(b"zzz")),
            Err(CodecError::UnknownTag(b'z'))
        );
        assert_eq!(decode_acceptor_message(b""), Err(CodecError::Empty));
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let big = Bytes::from(vec![TAG_APPEND_REQUEST; MAX_MESSAGE_SIZE + 1]);
        assert_eq!(
            decode_proposer_message(&big),
            Err(CodecError::TooLarge(MAX_MESSAGE_SIZE + 1))
        );
    }

    #[test]
    fn append_with_more_wal_than_the_limit_is_refused() {
        let append = |len: usize| {
            ProposerMessage::Append(AppendRequest {
                term: 1,
                begin_lsn: Lsn(0),
                end_lsn: Lsn(len as u64),
                commit_lsn: Lsn(0),
                peer_horizon_lsn: Lsn(0),
                slot_horizon_lsn: Lsn(0),
                wal: Bytes::from(vec![7u8; len]),
            })
        };
        let most = append(MAX_APPEND_WAL);
        assert_eq!(
            decode_proposer_message(&encode_proposer_message(&most)),
            Ok(most)
        );
        // One byte more still fits the message limit, not the WAL limit.
        let over = encode_proposer_message(&append(MAX_APPEND_WAL + 1));
        assert!(over.len() <= MAX_MESSAGE_SIZE);
        assert_eq!(
            decode_proposer_message(&over),
            Err(CodecError::AppendTooLarge(MAX_APPEND_WAL + 1))
        );
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // An Elected whose history claims 2^60 entries: must fail fast on the
        // size limit, not try to allocate.
        let mut bytes = vec![TAG_ELECTED];
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&77u64.to_le_bytes());
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode_proposer_message(&Bytes::from(bytes)),
            Err(CodecError::Malformed { .. })
        ));
        // A greeting whose member address claims a 4 GiB string.
        let mut g = encode_proposer_message(&ProposerMessage::Greeting(greeting())).to_vec();
        g.truncate(1 + 4 + 32 + 8 + 4 + 4 + 4 + 8 + 8 + 8);
        g.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_proposer_message(&Bytes::from(g)).is_err());
    }

    #[test]
    fn append_whose_range_disagrees_with_its_bytes_is_refused() {
        let m = ProposerMessage::Append(AppendRequest {
            term: 1,
            begin_lsn: Lsn(100),
            end_lsn: Lsn(110),
            commit_lsn: Lsn(0),
            peer_horizon_lsn: Lsn(0),
            slot_horizon_lsn: Lsn(0),
            wal: Bytes::from_static(b"12345"),
        });
        assert!(matches!(
            decode_proposer_message(&encode_proposer_message(&m)),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
    }
    impl Versioned for Sample {
        const WHAT: &'static str = "sample";
        const FORMAT_VERSION: u16 = 3;
    }

    #[test]
    fn a_greeting_of_another_protocol_is_refused_by_its_version() {
        // A protocol-2 greeting: version, then a layout this build does not
        // read.
        let mut v2 = vec![TAG_GREETING];
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(&[0u8; 40]);
        assert_eq!(
            decode_proposer_message(&Bytes::from(v2)),
            Err(CodecError::OtherProtocol { found: 2 })
        );
        let mut v4 = vec![TAG_ACCEPTOR_GREETING];
        v4.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        assert_eq!(
            decode_acceptor_message(&v4),
            Err(CodecError::OtherProtocol {
                found: PROTOCOL_VERSION + 1
            })
        );
    }

    #[test]
    fn stored_values_carry_and_check_their_version() {
        let v = Sample {
            a: 1,
            b: "x".into(),
        };
        let bytes = encode_stored(&v).unwrap();
        assert_eq!(&bytes[..2], &[0, 3]);
        assert_eq!(decode_stored::<Sample>(&bytes).unwrap(), v);
        let mut other = bytes.clone();
        other[1] = 4;
        assert!(matches!(
            decode_stored::<Sample>(&other),
            Err(CodecError::UnknownVersion {
                found: 4,
                known: 3,
                ..
            })
        ));
        assert!(decode_stored::<Sample>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_stored::<Sample>(&[0]).is_err());
    }

    #[test]
    fn a_value_above_the_store_limit_is_an_error_not_a_panic() {
        let fits = Sample {
            a: 1,
            b: "x".repeat(MAX_STRUCT_SIZE as usize - 16),
        };
        let bytes = encode_stored(&fits).unwrap();
        assert_eq!(decode_stored::<Sample>(&bytes).unwrap(), fits);
        let big = Sample {
            a: 1,
            b: "x".repeat(MAX_STRUCT_SIZE as usize),
        };
        assert!(matches!(
            encode_stored(&big),
            Err(CodecError::Unencodable { what: "sample", .. })
        ));
    }

    #[test]
    fn a_message_above_the_limit_encodes_and_its_peer_refuses_it() {
        let mut g = greeting();
        g.members
            .insert(NodeId(3), "h".repeat(MAX_STRUCT_SIZE as usize));
        let bytes = encode_proposer_message(&ProposerMessage::Greeting(g));
        assert!(decode_proposer_message(&bytes).is_err());
    }
}
