//! Decoders of stored values and of text from operators and peers: timeline
//! state, slot records, the store's meta record, WAL chunks, ids, LSNs, WAL
//! segment names, member lists and connection strings.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::codec::{decode_stored, encode_stored};
use crate::consensus::acceptor::decode_timeline_state;
use crate::consensus::proposer::parse_members;
use crate::id::{NodeId, TenantId, TimelineId, Ttid};
use crate::lsn::{is_valid_wal_seg_size, parse_segment_file_name, segment_file_name, Lsn};
use crate::pq::client::{parse_wal_segment_size, ConnConfig};
use crate::pq::replication::parse_pg_bool;
use crate::store::layout::{
    chunk_value, decode_store_meta, parse_chunk, wal_key, STORE_FORMAT_VERSION,
};
use crate::store::SlotRecord;

/// Stored records as read back from a store: the first byte picks the
/// record. A record that decodes must be stored again unchanged; one that
/// decodes but cannot be encoded would fail its next write.
pub fn stored_values(data: &[u8]) {
    let Some((&which, raw)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(s) = decode_timeline_state(raw) {
                let bytes = encode_stored(&s).expect("a decoded timeline state encodes");
                assert_eq!(decode_timeline_state(&bytes).ok().as_ref(), Some(&s));
            }
        }
        1 => {
            if let Ok(r) = decode_stored::<SlotRecord>(raw) {
                let bytes = encode_stored(&r).expect("a decoded slot record encodes");
                assert_eq!(decode_stored::<SlotRecord>(&bytes).ok().as_ref(), Some(&r));
            }
        }
        2 => {
            if let Ok((meta, version)) = decode_store_meta(raw) {
                assert!((1..=STORE_FORMAT_VERSION).contains(&version));
                let bytes = encode_stored(&meta).expect("a decoded meta record encodes");
                assert_eq!(
                    decode_store_meta(&bytes).ok(),
                    Some((meta, STORE_FORMAT_VERSION))
                );
            }
        }
        _ => wal_chunk(raw),
    }
}

/// A WAL chunk entry: a key length byte, the key, then the value. The
/// timeline is the key's own prefix when it has one.
fn wal_chunk(data: &[u8]) {
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at((key_len as usize).min(rest.len()));
    let ttid = match key.first_chunk::<32>() {
        Some(p) => Ttid::new(
            TenantId(p[..16].try_into().expect("16 bytes")),
            TimelineId(p[16..].try_into().expect("16 bytes")),
        ),
        None => Ttid::default(),
    };
    if let Ok((start, payload, crc_ok)) = parse_chunk(ttid, key, value, Lsn(0), Lsn(u64::MAX)) {
        assert_eq!(&wal_key(ttid, start)[..], key);
        assert_eq!(chunk_value(ttid, start, payload) == value, crc_ok);
    }
}

/// Text values: the first byte picks the parser, the rest is the text. What
/// parses must print as text that parses to the same value.
pub fn text_values(data: &[u8]) {
    let Some((&which, raw)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(raw);
    match which % 8 {
        0 => reparses::<TenantId>(&text),
        1 => reparses::<TimelineId>(&text),
        2 => reparses::<Ttid>(&text),
        3 => reparses::<NodeId>(&text),
        4 => reparses::<Lsn>(&text),
        5 => {
            let seg_size = 1u32 << (20 + (which / 8) % 11);
            if let Some((tli, segno)) = parse_segment_file_name(&text, seg_size) {
                let name = segment_file_name(tli, segno, seg_size);
                assert_eq!(parse_segment_file_name(&name, seg_size), Some((tli, segno)));
            }
        }
        6 => {
            if let Ok(members) = parse_members(&text) {
                let mut spec = String::new();
                for (id, addr) in &members {
                    let _ = write!(spec, "{id}@{addr},");
                }
                assert_eq!(parse_members(&spec).ok().as_ref(), Some(&members));
            }
        }
        _ => {
            if let Some(size) = parse_wal_segment_size(&text) {
                assert!(is_valid_wal_seg_size(size));
            }
            let _ = parse_pg_bool(&text);
        }
    }
}

fn reparses<T>(text: &str)
where
    T: FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = text.parse::<T>() {
        let printed = v.to_string();
        assert_eq!(printed.parse::<T>().ok().as_ref(), Some(&v), "{printed:?}");
    }
}

/// libpq connection strings (keyword/value and URI), parsed without the
/// environment. A parsed configuration must parse back from its
/// keyword/value spelling.
pub fn conninfo(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = ConnConfig::parse_with_env(&text, |_| None) else {
        return;
    };
    let spelled = conninfo_text(&cfg);
    let back = ConnConfig::parse_with_env(&spelled, |_| None);
    assert_eq!(back.ok().as_ref(), Some(&cfg), "{spelled:?} from {text:?}");
}

fn conninfo_text(cfg: &ConnConfig) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut out = format!(
        "host={} port={} user={} sslmode={}",
        quote(&cfg.host),
        cfg.port,
        quote(&cfg.user),
        format!("{:?}", cfg.sslmode).to_lowercase()
    );
    let optional = [
        ("hostaddr", cfg.hostaddr.map(|a| a.to_string())),
        ("password", cfg.password.clone()),
        ("dbname", cfg.dbname.clone()),
        ("fallback_application_name", cfg.application_name.clone()),
        ("options", cfg.options.clone()),
        (
            "connect_timeout",
            cfg.connect_timeout.map(|d| d.as_secs().to_string()),
        ),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            let _ = write!(out, " {key}={}", quote(&v));
        }
    }
    out
}
