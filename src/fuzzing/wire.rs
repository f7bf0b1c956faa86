//! Wire decoders: the PostgreSQL start-up packet and message framing (both
//! directions), the streaming sub-messages, the replication command grammar
//! and the proposer/acceptor codec.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{
    decode_acceptor_message, decode_proposer_message, encode_acceptor_message,
    encode_proposer_message,
};
use crate::consensus::messages::{AcceptorMessage, ProposerMessage};
use crate::pq::client::{parse_data_row, parse_error_fields, parse_frame};
use crate::pq::frame::{
    FeMessage, FeStartupPacket, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE,
};
use crate::pq::replication::{
    encode_hex, ReplicationCommand, ServerReplMessage, StandbyReplMessage,
};

/// Parse `data` as a stream of frames with `parse` until it needs more bytes
/// or fails: a frame taken consumes bytes, a `None` consumes none.
fn each_frame<T, E>(
    data: &[u8],
    parse: impl Fn(&mut BytesMut) -> Result<Option<T>, E>,
    mut check: impl FnMut(T),
) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse(&mut buf) {
            Ok(Some(frame)) => {
                assert!(
                    buf.len() < before,
                    "a frame was taken without consuming bytes"
                );
                check(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Start-up packets, as a client sends them before the first typed message.
pub fn startup(data: &[u8]) {
    each_frame(data, FeStartupPacket::parse, |p| {
        let mut buf = encode_startup(&p);
        assert_eq!(FeStartupPacket::parse(&mut buf).ok().flatten(), Some(p));
        assert!(buf.is_empty());
    });
}

fn encode_startup(p: &FeStartupPacket) -> BytesMut {
    let mut body = BytesMut::new();
    match p {
        FeStartupPacket::SslRequest => body.put_u32(SSL_REQUEST_CODE),
        FeStartupPacket::GssEncRequest => body.put_u32(GSSENC_REQUEST_CODE),
        FeStartupPacket::CancelRequest {
            process_id,
            secret_key,
        } => {
            body.put_u32(CANCEL_REQUEST_CODE);
            body.put_i32(*process_id);
            body.put_i32(*secret_key);
        }
        FeStartupPacket::Startup { minor, params } => {
            body.put_u32((3 << 16) | u32::from(*minor));
            for (name, value) in params {
                for s in [name, value] {
                    body.put_slice(s.as_bytes());
                    body.put_u8(0);
                }
            }
            body.put_u8(0);
        }
    }
    let mut out = BytesMut::new();
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out
}

/// Typed frontend messages after start-up, and the standby sub-messages
/// their CopyData carries.
pub fn frontend(data: &[u8]) {
    each_frame(data, FeMessage::parse, |m| {
        let mut buf = encode_frontend(&m);
        assert_eq!(FeMessage::parse(&mut buf).ok().flatten().as_ref(), Some(&m));
        if let FeMessage::CopyData(body) = m {
            if let Ok(sub) = StandbyReplMessage::decode(&body) {
                let mut again = BytesMut::new();
                sub.encode(&mut again);
                assert_eq!(StandbyReplMessage::decode(&again).ok(), Some(sub));
            }
        }
    });
}

fn encode_frontend(m: &FeMessage) -> BytesMut {
    let cstr = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        Bytes::from(b)
    };
    let (tag, body) = match m {
        FeMessage::Query(q) => (b'Q', cstr(q)),
        FeMessage::CopyData(b) => (b'd', b.clone()),
        FeMessage::CopyDone => (b'c', Bytes::new()),
        FeMessage::CopyFail(s) => (b'f', cstr(s)),
        FeMessage::Sync => (b'S', Bytes::new()),
        FeMessage::Terminate => (b'X', Bytes::new()),
        FeMessage::Password(b) => (b'p', b.clone()),
        FeMessage::Unknown { tag, body } => (*tag, body.clone()),
    };
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out
}

/// Backend messages as the proxy's client reads them from a primary or a
/// safekeeper: framing, error fields, data rows and streamed WAL.
pub fn backend(data: &[u8]) {
    each_frame(data, parse_frame, |f| match f.tag {
        b'E' | b'N' => {
            let _ = parse_error_fields(f.body);
        }
        b'D' => {
            let _ = parse_data_row(f.body);
        }
        b'd' => {
            if let Ok(m) = ServerReplMessage::decode(&f.body) {
                if let ServerReplMessage::XLogData(x) = &m {
                    let _ = x.data_end();
                }
                let mut again = BytesMut::new();
                m.encode(&mut again);
                assert_eq!(ServerReplMessage::decode(&again.freeze()).ok(), Some(m));
            }
        }
        _ => {}
    });
}

/// The replication command grammar; a command with a canonical spelling
/// must parse back from it to the same command.
pub fn replication_command(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(cmd) = ReplicationCommand::parse(&text) else {
        return;
    };
    if let Some(canonical) = canonical_command(&cmd) {
        assert_eq!(
            ReplicationCommand::parse(&canonical).as_ref(),
            Ok(&cmd),
            "{canonical:?} from {text:?}"
        );
    }
}

fn canonical_command(cmd: &ReplicationCommand) -> Option<String> {
    Some(match cmd {
        ReplicationCommand::IdentifySystem => "IDENTIFY_SYSTEM".into(),
        ReplicationCommand::TimelineHistory { timeline } => format!("TIMELINE_HISTORY {timeline}"),
        ReplicationCommand::PutTimelineHistory { timeline, content } => {
            format!("PUT_TIMELINE_HISTORY {timeline} '{}'", encode_hex(content))
        }
        ReplicationCommand::TimelineSettled { term, lsn } => {
            format!("TIMELINE_SETTLED (term '{term}', lsn '{lsn}')")
        }
        ReplicationCommand::StartReplication {
            slot: None,
            start_lsn,
            timeline,
            options,
        } if options.is_empty() => match timeline {
            Some(t) => format!("START_REPLICATION PHYSICAL {start_lsn} TIMELINE {t}"),
            None => format!("START_REPLICATION PHYSICAL {start_lsn}"),
        },
        _ => return None,
    })
}

/// The proposer/acceptor codec on raw bytes: the first byte picks the
/// direction. A decoded message must re-encode to one that decodes equal.
pub fn proposer_codec(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(m) = decode_proposer_message(&Bytes::copy_from_slice(rest)) {
            check_proposer_roundtrip(&m);
        }
    } else if let Ok(m) = decode_acceptor_message(rest) {
        check_acceptor_roundtrip(&m);
    }
}

/// A proposer message survives encoding and decoding unchanged.
pub(crate) fn check_proposer_roundtrip(m: &ProposerMessage) {
    let bytes = encode_proposer_message(m);
    match decode_proposer_message(&bytes) {
        Ok(back) => assert_eq!(&back, m),
        Err(e) => panic!("a proposer message does not decode after encoding: {e}"),
    }
}

/// An acceptor message survives encoding and decoding unchanged.
pub(crate) fn check_acceptor_roundtrip(m: &AcceptorMessage) {
    let bytes = encode_acceptor_message(m);
    match decode_acceptor_message(&bytes) {
        Ok(back) => assert_eq!(&back, m),
        Err(e) => panic!("an acceptor message does not decode after encoding: {e}"),
    }
}
