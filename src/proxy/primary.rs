//! The proxy's replication connection to the primary: who it is, its slot,
//! and one START_REPLICATION at the slot's segment start, held before any
//! vote is asked for.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::event::{Event, PrimaryGone};
use super::ProxyError;
use crate::consensus::messages::ServerInfo;
use crate::lsn::Lsn;
use crate::pq::client::{ConnConfig, CopyMessage, PgClient, PgReader, PgWriter};
use crate::pq::replication::ServerReplMessage;

/// SQLSTATE object_in_use: another walsender holds the slot.
const OBJECT_IN_USE: &str = "55006";
/// SQLSTATE undefined_file: a walsender asked for WAL its server removed
/// ("requested WAL segment … has already been removed").
const WAL_REMOVED: &str = "58P01";

/// Whether the primary said it no longer holds the WAL asked for.
fn wal_removed(e: &crate::pq::client::ClientError) -> bool {
    e.sqlstate() == Some(WAL_REMOVED)
}

pub struct PrimaryStream {
    pub server: ServerInfo,
    /// End of WAL on the primary when we connected.
    pub flush_lsn: Lsn,
    /// Where streaming starts: the segment start of the slot's restart LSN.
    pub start_lsn: Lsn,
    pub reader: PgReader,
    pub writer: PgWriter,
    /// The primary's history file of its timeline when that is above 1
    /// (`TIMELINE_HISTORY`): (tli, content), for the safekeepers to serve.
    pub history: Option<(u32, bytes::Bytes)>,
}

/// `server_version` ("15.18 (Debian …)") as PG_VERSION_NUM (150018).
pub fn version_num(v: &str) -> Option<u32> {
    let num: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = num.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(major * 10000 + minor)
}

/// `not_after`: start streaming at or below this LSN's segment even when the
/// slot is ahead (the safekeepers lost WAL the slot no longer holds for, and
/// the primary may still have it by `wal_keep_size`).
pub async fn connect(
    cfg: &ConnConfig,
    slot: &str,
    not_after: Option<Lsn>,
) -> Result<PrimaryStream, ProxyError> {
    let retry = |what: &str, e: crate::pq::client::ClientError| {
        ProxyError::Retry(format!("primary: {what}: {e}"))
    };
    let mut client = PgClient::connect(cfg, true, "")
        .await
        .map_err(|e| retry("connecting", e))?;
    let version = client
        .parameter("server_version")
        .and_then(version_num)
        .ok_or_else(|| {
            ProxyError::Fatal("primary did not report a usable server_version".into())
        })?;
    let id = client
        .identify_system()
        .await
        .map_err(|e| retry("IDENTIFY_SYSTEM", e))?;
    let wal_seg_size = client
        .wal_segment_size()
        .await
        .map_err(|e| retry("SHOW wal_segment_size", e))?;
    // The proxy finds record ends by WAL page (proxy/records.rs).
    let block = client
        .show("wal_block_size")
        .await
        .map_err(|e| retry("SHOW wal_block_size", e))?;
    if block != super::records::WAL_PAGE.to_string() {
        return Err(ProxyError::Fatal(format!(
            "the primary's wal_block_size is {block}; safekeeper-proxy supports only PostgreSQL's default of {}",
            super::records::WAL_PAGE
        )));
    }
    let slot_info = match client.read_replication_slot(slot).await.map_err(|e| retry("READ_REPLICATION_SLOT", e))? {
        Some(info) if info.restart_lsn.is_some() => info,
        Some(_) => {
            return Err(ProxyError::Fatal(format!(
                "slot {slot:?} on the primary holds no WAL (created without RESERVE_WAL?); drop it or name another --slot"
            )))
        }
        None => {
            tracing::info!(slot, "creating the physical replication slot on the primary");
            client
                .create_physical_slot(slot, true)
                .await
                .map_err(|e| retry("CREATE_REPLICATION_SLOT", e))?;
            client
                .read_replication_slot(slot)
                .await
                .map_err(|e| retry("READ_REPLICATION_SLOT", e))?
                .ok_or_else(|| ProxyError::Retry(format!("slot {slot:?} vanished after creation")))?
        }
    };
    let restart = slot_info.restart_lsn.unwrap_or(id.xlogpos);
    let mut start_lsn = restart.segment_start(wal_seg_size);
    if let Some(lsn) = not_after {
        let rewound = lsn.segment_start(wal_seg_size);
        if rewound < start_lsn {
            tracing::info!(slot_start = %start_lsn, from = %rewound, "streaming from below the slot, where the safekeepers' WAL ends");
            start_lsn = rewound;
        }
    }
    // Consumers of a timeline above 1 ask for its history file first.
    let history = if id.timeline > 1 {
        let (_, content) = client
            .timeline_history(id.timeline)
            .await
            .map_err(|e| retry("TIMELINE_HISTORY", e))?;
        Some((id.timeline, content))
    } else {
        None
    };
    match client
        .start_physical_replication(Some(slot), start_lsn, Some(id.timeline))
        .await
    {
        Ok(()) => {}
        Err(e) if e.sqlstate() == Some(OBJECT_IN_USE) => {
            // Another proxy streams from this slot: ask for no votes, or the
            // two would steal terms from each other in a loop.
            return Err(ProxyError::Retry(format!(
                "primary: slot {slot:?} is busy ({e}); not asking for votes"
            )));
        }
        Err(e) if wal_removed(&e) => {
            return Err(ProxyError::WalRemoved(format!(
                "primary: START_REPLICATION: {e}"
            )))
        }
        Err(e) => return Err(retry("START_REPLICATION", e)),
    }
    let (reader, writer) = client.into_split();
    Ok(PrimaryStream {
        server: ServerInfo {
            system_id: id.system_id,
            pg_version: version,
            wal_seg_size,
            tli: id.timeline,
        },
        flush_lsn: id.xlogpos,
        start_lsn,
        reader,
        writer,
        history,
    })
}

/// Forward the primary's WAL and keepalives to the session. The channel is
/// bounded, so a session that stops taking WAL stops this reader, and TCP
/// then stops the primary: memory stays bounded.
pub async fn run_reader(mut reader: PgReader, events: mpsc::Sender<Event>) {
    let mut removed = false;
    let reason = loop {
        match reader.recv_copy().await {
            Ok(CopyMessage::Data(body)) => match ServerReplMessage::decode(&body) {
                Ok(ServerReplMessage::XLogData(x)) => {
                    let ev = Event::PrimaryWal {
                        start: x.data_start,
                        wal: Bytes::clone(&x.data),
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(ServerReplMessage::Keepalive(k)) => {
                    if k.reply_requested && events.send(Event::PrimaryPing).await.is_err() {
                        return;
                    }
                }
                Err(e) => break format!("primary sent a malformed message: {e}"),
            },
            Ok(other) => break format!("primary ended streaming ({other:?})"),
            Err(e) => {
                removed = wal_removed(&e);
                break format!("primary: {e}");
            }
        }
    };
    let gone = PrimaryGone {
        reason,
        wal_removed: removed,
    };
    let _ = events.send(Event::PrimaryGone(gone)).await;
}
