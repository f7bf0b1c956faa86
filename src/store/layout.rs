//! The byte layout of stored records that needs no RocksDB: the store's meta
//! record, WAL chunk keys and values (schema/store.md). `rocks` reads and
//! writes them; they are here so the decoders build (and are fuzzed) without
//! the `rocksdb` feature.

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::codec::{decode_stored, CodecError, Versioned};
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;

/// Version of the whole on-disk layout (schema/store.md): column families,
/// key schema and the WAL chunk value. A store of another version is refused,
/// except versions 1 to 3, which this build reads and upgrades
/// (schema/store.md).
pub const STORE_FORMAT_VERSION: u16 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub node_id: NodeId,
}

impl Versioned for StoreMeta {
    const WHAT: &'static str = "store";
    const FORMAT_VERSION: u16 = STORE_FORMAT_VERSION;
}

/// The meta record of an older store of format version `V` (1 to 3): the
/// same body under its own version, so one type serves every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OlderStoreMeta<const V: u16> {
    node_id: NodeId,
}

impl<const V: u16> Versioned for OlderStoreMeta<V> {
    const WHAT: &'static str = "store";
    const FORMAT_VERSION: u16 = V;
}

fn decode_older<const V: u16>(raw: &[u8]) -> Result<(StoreMeta, u16), CodecError> {
    decode_stored::<OlderStoreMeta<V>>(raw).map(|m| (StoreMeta { node_id: m.node_id }, V))
}

/// The meta record and the store format version it names.
pub fn decode_store_meta(raw: &[u8]) -> Result<(StoreMeta, u16), CodecError> {
    match raw.first_chunk::<2>().map(|v| u16::from_be_bytes(*v)) {
        Some(1) => decode_older::<1>(raw),
        Some(2) => decode_older::<2>(raw),
        Some(3) => decode_older::<3>(raw),
        _ => decode_stored::<StoreMeta>(raw).map(|m| (m, STORE_FORMAT_VERSION)),
    }
}

/// Key of a WAL chunk: tenant ‖ timeline ‖ start LSN (big-endian, so keys
/// sort in LSN order).
pub fn wal_key(ttid: Ttid, start: Lsn) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&ttid.key_prefix());
    k[32..].copy_from_slice(&start.0.to_be_bytes());
    k
}

/// crc32c over tenant ‖ timeline ‖ start LSN (big-endian) ‖ bytes: the key is
/// covered so a chunk stored under the wrong LSN or timeline fails the check.
pub fn chunk_crc(ttid: Ttid, start: Lsn, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&wal_key(ttid, start)), bytes)
}

/// A WAL chunk value: crc32c (u32 big-endian) ‖ bytes.
pub fn chunk_value(ttid: Ttid, start: Lsn, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + bytes.len());
    v.extend_from_slice(&chunk_crc(ttid, start, bytes).to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// Split a stored WAL entry into start LSN, payload and CRC verdict. A key or
/// value that cannot be a chunk at all is corruption of `[from, to)`.
pub fn parse_chunk<'v>(
    ttid: Ttid,
    key: &[u8],
    value: &'v [u8],
    from: Lsn,
    to: Lsn,
) -> Result<(Lsn, &'v [u8], bool), StoreError> {
    let prefix = ttid.key_prefix();
    let start = match key.get(32..).map(<[u8; 8]>::try_from) {
        Some(Ok(lsn)) if key[..32] == prefix => Lsn(u64::from_be_bytes(lsn)),
        _ => {
            return Err(StoreError::CorruptWal {
                ttid,
                from,
                to,
                detail: format!("malformed WAL key of {} bytes", key.len()),
            })
        }
    };
    let Some((crc, payload)) = value.split_first_chunk::<4>() else {
        return Err(StoreError::CorruptWal {
            ttid,
            from: start,
            to: start,
            detail: format!("chunk value of {} bytes has no checksum", value.len()),
        });
    };
    let ok = u32::from_be_bytes(*crc) == chunk_crc(ttid, start, payload);
    Ok((start, payload, ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_stored;

    fn older<const V: u16>(node: u64) -> Vec<u8> {
        encode_stored(&OlderStoreMeta::<V> {
            node_id: NodeId(node),
        })
        .unwrap()
    }

    #[test]
    fn every_known_store_format_decodes_with_its_version() {
        let meta = |n| StoreMeta { node_id: NodeId(n) };
        assert_eq!(decode_store_meta(&older::<1>(7)).unwrap(), (meta(7), 1));
        assert_eq!(decode_store_meta(&older::<2>(8)).unwrap(), (meta(8), 2));
        assert_eq!(decode_store_meta(&older::<3>(9)).unwrap(), (meta(9), 3));
        let now = encode_stored(&meta(10)).unwrap();
        assert_eq!(
            decode_store_meta(&now).unwrap(),
            (meta(10), STORE_FORMAT_VERSION)
        );
        assert!(matches!(
            decode_store_meta(&older::<5>(1)),
            Err(CodecError::UnknownVersion { found: 5, .. })
        ));
        assert!(decode_store_meta(&[]).is_err());
    }
}
