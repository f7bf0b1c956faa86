//! The replication commands, one file each, as tokio's mini-redis has its
//! `cmd` module: each command is parsed from a simple query
//! ([`ReplicationCommand::parse`]) and applied to the connection it came on.
//! [`super::connection`] keeps the start-up and the loop that reads queries.

mod create_replication_slot;
mod drop_replication_slot;
mod identify_system;
mod put_timeline_history;
mod read_replication_slot;
mod show;
mod start_replication;
mod start_wal_push;
mod timeline_history;
mod timeline_settled;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::client::Client;
use super::Shared;
use crate::pq::connection::PqConnection;
use crate::pq::frame::BeMessage;
use crate::pq::replication::ReplicationCommand;
use crate::pq::{sqlstate, PqError};
use crate::store::writer::Synced;

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next query.
    Query,
    /// Close the connection (the command ended it: a stream or a shutdown).
    Close,
}

/// Parse and run one simple query.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    text: &str,
) -> Result<Next, PqError> {
    let command = match ReplicationCommand::parse(text) {
        Ok(c) => c,
        Err(e) => {
            conn.send_error(e.sqlstate(), &e.to_string()).await?;
            return Ok(Next::Query);
        }
    };
    if let Some(why) = super::auth::refusal(client.role, &client.params.user, &command) {
        tracing::warn!(peer = %client.peer, "refused: {why}");
        conn.send_error(sqlstate::INSUFFICIENT_PRIVILEGE, &why)
            .await?;
        return Ok(Next::Query);
    }
    apply(shared, conn, client, command).await
}

/// Apply a parsed command to the connection.
async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    command: ReplicationCommand,
) -> Result<Next, PqError> {
    use ReplicationCommand as C;
    match command {
        C::Empty => {
            conn.write_message(&BeMessage::EmptyQueryResponse)?;
            conn.send_ready_for_query().await?;
            Ok(Next::Query)
        }
        C::IdentifySystem => identify_system::apply(shared, conn, client).await,
        C::Show { name } => show::apply(shared, conn, client, &name).await,
        C::TimelineHistory { timeline } => {
            timeline_history::apply(shared, conn, client, timeline).await
        }
        C::PutTimelineHistory { timeline, content } => {
            put_timeline_history::apply(shared, conn, client, timeline, content).await
        }
        C::ReadReplicationSlot { slot } => {
            read_replication_slot::apply(shared, conn, client, &slot).await
        }
        C::CreateReplicationSlot {
            slot,
            temporary,
            reserve_wal,
        } => {
            create_replication_slot::apply(shared, conn, client, slot, temporary, reserve_wal).await
        }
        C::DropReplicationSlot { slot, wait } => {
            drop_replication_slot::apply(shared, conn, client, &slot, wait).await
        }
        C::StartReplication {
            slot,
            start_lsn,
            timeline,
            options,
        } => {
            start_replication::apply(shared, conn, client, slot, start_lsn, timeline, &options)
                .await
        }
        C::StartWalPush { .. } => start_wal_push::apply(shared, conn, client).await,
        C::TimelineSettled { term, lsn } => {
            timeline_settled::apply(shared, conn, client, term, lsn).await
        }
        C::Unsupported(text) => {
            conn.send_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                &format!("command not supported by this safekeeper: {}", text.trim()),
            )
            .await?;
            Ok(Next::Query)
        }
    }
}

/// After a slot command: a `DROP_REPLICATION_SLOT … WAIT` cut short by the
/// shutdown closes the connection.
fn after_slot_command(shared: &Shared) -> Next {
    if *shared.shutdown.borrow() {
        Next::Close
    } else {
        Next::Query
    }
}

/// Whether a slot write (if any) reached the disk.
async fn slot_stored(synced: Option<Synced>) -> bool {
    match synced {
        None => true,
        Some(rx) => matches!(rx.await, Ok(Ok(()))),
    }
}
