//! Connections from the proxy to safekeepers: one START_WAL_PUSH stream per
//! member (a reader task forwarding replies, a writer task sending what the
//! proposer says), and recovery reads from a donor's replication port.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::event::{Event, Refused};
use crate::codec::{decode_acceptor_message, encode_proposer_message};
use crate::consensus::messages::{ProposerMessage, ServerInfo};
use crate::consensus::term_history::Term;
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;
use crate::pq::client::{ClientError, ConnConfig, CopyMessage, PgClient};
use crate::pq::replication::{encode_hex, ServerReplMessage};

/// Startup options of every proxy connection to a safekeeper: proposer
/// connections are never refused and may read up to flush_lsn.
pub fn proposer_options(ttid: Ttid) -> String {
    format!(
        "-c walkeeper.role=proposer -c tenant_id={} -c timeline_id={}",
        ttid.tenant_id, ttid.timeline_id
    )
}

/// How to connect to the safekeeper at `addr`: `conninfo`
/// (`--safekeeper-conninfo`: user, password, passfile, sslmode, sslrootcert,
/// …) over these defaults, with host and port from the member list. Host
/// and port in `conninfo` are refused: the member list gives them.
pub fn conn_config(conninfo: &str, addr: &str) -> Result<ConnConfig, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("safekeeper address {addr:?} is not HOST:PORT"))?;
    if conninfo.contains("://") {
        return Err("--safekeeper-conninfo: give libpq key=value pairs, not a URI".into());
    }
    if let Some((k, _)) = conninfo
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| matches!(k.trim(), "host" | "hostaddr" | "port"))
    {
        return Err(format!(
            "--safekeeper-conninfo: {k}= does not belong here: --safekeepers gives each safekeeper's address"
        ));
    }
    // A bracketed IPv6 address is a plain one to libpq.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut cfg = ConnConfig::parse(&format!(
        "user=walkeeper application_name=safekeeper_proxy connect_timeout=5 {conninfo} \
         host={host} port={port}"
    ))
    .map_err(|e| format!("--safekeeper-conninfo: {e}"))?;
    // A safekeeper behind a silent link is dropped by the kernel, and the
    // bytes queued for it with the socket (issue 22).
    cfg.tcp_liveness = Some(crate::pq::liveness::TcpLiveness::PEER);
    Ok(cfg)
}

/// Dial `addr`, start the push stream, and run it until either side ends.
/// Reports `Connected` with a sender for outgoing messages, every reply as
/// `Reply`, and `Disconnected` at the end (always, exactly once).
pub async fn run_push_connection(
    conninfo: String,
    node: NodeId,
    addr: String,
    ttid: Ttid,
    history: Option<(u32, Bytes)>,
    events: mpsc::Sender<Event>,
) {
    let (reason, refused) =
        match push_connection(&conninfo, node, &addr, ttid, history, &events).await {
            Ok(()) => ("closed".to_string(), None),
            Err(e) => e,
        };
    let _ = events
        .send(Event::Disconnected {
            node,
            reason,
            refused,
        })
        .await;
}

/// SQLSTATEs with which a safekeeper refuses the timeline itself (another
/// system_id, member set or segment size; no such timeline): retrying the
/// same greeting cannot succeed.
fn refusal(e: &ClientError) -> Option<Refused> {
    match e.sqlstate() {
        Some("42704") => Some(Refused::NoTimeline),
        Some("22023") => Some(Refused::Mismatch),
        _ => None,
    }
}

/// A safekeeper that refuses this proxy's credentials (no or a wrong
/// password: 28P01, 28000; a user without the proposer role: 42501) is
/// unusable until the operator fixes them: said at warning level, once per
/// node every 10 s, while the proxy keeps redialling.
fn warn_if_denied(node: NodeId, e: &ClientError) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static LAST: Mutex<Option<HashMap<NodeId, Instant>>> = Mutex::new(None);
    let denied = matches!(e, ClientError::Auth { .. })
        || matches!(e.sqlstate(), Some("28P01" | "28000" | "42501"));
    if !denied {
        return;
    }
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let at = last
        .get_or_insert_with(HashMap::new)
        .entry(node)
        .or_insert(now);
    if *at <= now {
        *at = now + Duration::from_secs(10);
        tracing::warn!(node = node.0, "safekeeper {node} refuses this proxy's credentials (check --safekeeper-conninfo: a proposer user and its password): {e}");
    }
}

/// Why a push connection ended, and whether the safekeeper refused the
/// timeline.
type Ended = (String, Option<Refused>);

async fn push_connection(
    conninfo: &str,
    node: NodeId,
    addr: &str,
    ttid: Ttid,
    history: Option<(u32, Bytes)>,
    events: &mpsc::Sender<Event>,
) -> Result<(), Ended> {
    let cfg = conn_config(conninfo, addr).map_err(|e| (e, Some(Refused::Mismatch)))?;
    // The push stream promises heartbeats, so a node cut off from this
    // proxy knows it within seconds (safekeeper::failover).
    let options = format!(
        "{} -c {}={}",
        proposer_options(ttid),
        crate::consensus::serving::HEARTBEAT_OPTION,
        crate::consensus::proposer::DEFAULT_HEARTBEAT_MS
    );
    let mut client = PgClient::connect(&cfg, true, &options).await.map_err(|e| {
        warn_if_denied(node, &e);
        (
            format!("connecting to safekeeper {node} at {addr}: {e}"),
            None,
        )
    })?;
    if let Some((tli, content)) = history {
        let sql = format!("PUT_TIMELINE_HISTORY {tli} '{}'", encode_hex(&content));
        client.simple_query(&sql).await.map_err(|e| {
            (
                format!("storing history {tli} on safekeeper {node} at {addr}: {e}"),
                None,
            )
        })?;
    }
    client
        .start_copy_both("START_WAL_PUSH")
        .await
        .map_err(|e| {
            warn_if_denied(node, &e);
            (
                format!("START_WAL_PUSH on safekeeper {node} at {addr}: {e}"),
                None,
            )
        })?;
    let (mut reader, mut writer) = client.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ProposerMessage>();
    if events
        .send(Event::Connected { node, sender: tx })
        .await
        .is_err()
    {
        return Ok(());
    }
    let write = async move {
        while let Some(msg) = rx.recv().await {
            writer
                .send_copy_data(&encode_proposer_message(&msg))
                .map_err(|e| (e.to_string(), None))?;
            // Coalesce what is already queued into one flush.
            while let Ok(more) = rx.try_recv() {
                writer
                    .send_copy_data(&encode_proposer_message(&more))
                    .map_err(|e| (e.to_string(), None))?;
            }
            writer
                .flush()
                .await
                .map_err(|e| (format!("sending to safekeeper {node}: {e}"), None))?;
        }
        // The session dropped our sender: it wants this connection closed.
        writer.send_copy_done();
        let _ = writer.flush().await;
        Ok::<(), Ended>(())
    };
    let read = async {
        loop {
            match reader.recv_copy().await {
                Ok(CopyMessage::Data(body)) => {
                    let msg = decode_acceptor_message(&body).map_err(|e| {
                        (
                            format!("safekeeper {node} sent a malformed reply: {e}"),
                            None,
                        )
                    })?;
                    if events.send(Event::Reply { node, msg }).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(other) => {
                    return Err((
                        format!("safekeeper {node} ended the push stream ({other:?})"),
                        None,
                    ))
                }
                Err(e) => return Err((format!("safekeeper {node}: {e}"), refusal(&e))),
            }
        }
    };
    tokio::select! {
        r = write => r,
        r = read => r,
    }
}

/// Read WAL `[start, end)` of `ttid` from a donor in `term` (served only
/// while the donor's term and last_log_term are `term`).
pub async fn recovery_read(
    conninfo: &str,
    addr: &str,
    ttid: Ttid,
    term: Term,
    start: Lsn,
    end: Lsn,
) -> Result<Bytes, String> {
    let cfg = conn_config(conninfo, addr)?;
    let mut client = PgClient::connect(&cfg, true, &proposer_options(ttid))
        .await
        .map_err(|e| format!("recovery read from {addr}: {e}"))?;
    client
        .start_copy_both(&format!(
            "START_REPLICATION PHYSICAL {start} (term '{term}')"
        ))
        .await
        .map_err(|e| format!("recovery read from {addr}: {e}"))?;
    let mut out = BytesMut::with_capacity((end.0 - start.0) as usize);
    let mut pos = start;
    while pos < end {
        match client
            .recv_copy()
            .await
            .map_err(|e| format!("recovery read from {addr}: {e}"))?
        {
            CopyMessage::Data(body) => match ServerReplMessage::decode(&body) {
                Ok(ServerReplMessage::XLogData(x)) => {
                    if x.data_start != pos {
                        return Err(format!(
                            "recovery read from {addr}: got WAL at {}, expected {pos}",
                            x.data_start
                        ));
                    }
                    let want = (end.0 - pos.0).min(x.data.len() as u64) as usize;
                    out.extend_from_slice(&x.data[..want]);
                    pos = Lsn(pos.0 + want as u64);
                }
                Ok(ServerReplMessage::Keepalive(_)) => {}
                Err(e) => return Err(format!("recovery read from {addr}: {e}")),
            },
            other => return Err(format!("recovery read from {addr} ended early: {other:?}")),
        }
    }
    Ok(out.freeze())
}

/// Tell a node that `--sync-only` settled it: it holds and has committed
/// `lsn` in `term`. The node records that durably before it answers.
pub async fn settle(
    conninfo: &str,
    addr: &str,
    ttid: Ttid,
    term: Term,
    lsn: Lsn,
) -> Result<(), String> {
    let cfg = conn_config(conninfo, addr)?;
    let mut client = PgClient::connect(&cfg, true, &proposer_options(ttid))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    client
        .simple_query(&format!("TIMELINE_SETTLED (term '{term}', lsn '{lsn}')"))
        .await
        .map_err(|e| format!("{addr}: TIMELINE_SETTLED: {e}"))?;
    let _ = client.close().await;
    Ok(())
}

/// What a safekeeper stores about a timeline's origin (for --sync-only,
/// which has no primary to ask): server info and timeline_start_lsn.
pub async fn timeline_info(
    conninfo: &str,
    addr: &str,
    ttid: Ttid,
) -> Result<(ServerInfo, Lsn), String> {
    let cfg = conn_config(conninfo, addr)?;
    let mut client = PgClient::connect(&cfg, true, &proposer_options(ttid))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let id = client
        .identify_system()
        .await
        .map_err(|e| format!("{addr}: IDENTIFY_SYSTEM: {e}"))?;
    let wal_seg_size = client
        .wal_segment_size()
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let num = |name: &'static str, v: String| {
        v.parse::<u64>()
            .map_err(|_| format!("{addr}: SHOW {name} gave {v:?}"))
    };
    let pg_version = num(
        "walkeeper.pg_version",
        client
            .show("walkeeper.pg_version")
            .await
            .map_err(|e| format!("{addr}: {e}"))?,
    )? as u32;
    let start: Lsn = client
        .show("walkeeper.timeline_start_lsn")
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .parse()
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok((
        ServerInfo {
            system_id: id.system_id,
            pg_version,
            wal_seg_size,
            tli: id.timeline,
        },
        start,
    ))
}
