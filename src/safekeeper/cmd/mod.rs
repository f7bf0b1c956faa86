//! The replication commands, one file each, as tokio's mini-redis has its
//! `cmd` module: each command is parsed from a simple query
//! ([`ReplicationCommand::parse`]) and applied to the connection it came on
//! ([`Context`]). [`super::connection`] keeps the start-up and the loop that
//! reads queries.

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
use crate::pq::{sqlstate, PgError, PqError};
use crate::store::writer::Synced;

/// What a command is applied to: the daemon, the connection the command
/// came on, and who is on the other end.
pub struct Context<'a, S> {
    pub shared: &'a Arc<Shared>,
    pub conn: &'a mut PqConnection<S>,
    pub client: &'a Client,
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next query.
    Query,
    /// Close the connection (the command ended it: a stream or a shutdown).
    Close,
}

/// How a command fails: refused (the client is told, and may send the next
/// query), or the connection broke.
#[derive(Debug)]
pub enum Failure {
    Refused(PgError),
    Connection(PqError),
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Failure {
        Failure::Refused(e)
    }
}

impl From<PqError> for Failure {
    fn from(e: PqError) -> Failure {
        Failure::Connection(e)
    }
}

/// What applying a command comes to.
pub type Outcome = Result<Next, Failure>;

/// Parse and run one simple query.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    text: &str,
) -> Result<Next, PqError> {
    let mut cx = Context {
        shared,
        conn,
        client,
    };
    let mut slot_command = false;
    let outcome = match parse(client, text) {
        Ok(command) => {
            slot_command = is_slot_command(&command);
            apply(&mut cx, command).await
        }
        Err(e) => Err(Failure::Refused(e)),
    };
    let next = match outcome {
        Ok(next) => next,
        Err(Failure::Refused(e)) => {
            cx.conn.send_pg_error(&e).await?;
            Next::Query
        }
        Err(Failure::Connection(e)) => return Err(e),
    };
    // A `DROP_REPLICATION_SLOT … WAIT` cut short by the shutdown.
    if slot_command && *shared.shutdown.borrow() {
        return Ok(Next::Close);
    }
    Ok(next)
}

/// The command, if it parses and the client's role may run it.
fn parse(client: &Client, text: &str) -> Result<ReplicationCommand, PgError> {
    let command = ReplicationCommand::parse(text)?;
    if let Some(why) = super::auth::refusal(client.role, &client.params.user, &command) {
        tracing::warn!(peer = %client.peer, "refused: {why}");
        return Err(PgError::new(sqlstate::INSUFFICIENT_PRIVILEGE, why));
    }
    Ok(command)
}

fn is_slot_command(command: &ReplicationCommand) -> bool {
    matches!(
        command,
        ReplicationCommand::ReadReplicationSlot { .. }
            | ReplicationCommand::CreateReplicationSlot { .. }
            | ReplicationCommand::DropReplicationSlot { .. }
    )
}

/// Apply a parsed command to the connection.
async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    command: ReplicationCommand,
) -> Outcome {
    use ReplicationCommand as C;
    match command {
        C::Empty => {
            cx.conn.write_message(&BeMessage::EmptyQueryResponse)?;
            cx.conn.send_ready_for_query().await?;
            Ok(Next::Query)
        }
        C::IdentifySystem => identify_system::apply(cx).await,
        C::Show { name } => show::apply(cx, &name).await,
        C::TimelineHistory { timeline } => timeline_history::apply(cx, timeline).await,
        C::PutTimelineHistory { timeline, content } => {
            put_timeline_history::apply(cx, timeline, content).await
        }
        C::ReadReplicationSlot { slot } => read_replication_slot::apply(cx, &slot).await,
        C::CreateReplicationSlot {
            slot,
            temporary,
            reserve_wal,
        } => create_replication_slot::apply(cx, slot, temporary, reserve_wal).await,
        C::DropReplicationSlot { slot, wait } => {
            drop_replication_slot::apply(cx, &slot, wait).await
        }
        C::StartReplication {
            slot,
            start_lsn,
            timeline,
            options,
        } => start_replication::apply(cx, slot, start_lsn, timeline, &options).await,
        C::StartWalPush { .. } => start_wal_push::apply(cx).await,
        C::TimelineSettled { term, lsn } => timeline_settled::apply(cx, term, lsn).await,
        C::Unsupported(text) => Err(PgError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("command not supported by this safekeeper: {}", text.trim()),
        )
        .into()),
    }
}

/// Answer a command that returns no rows: its tag, then ReadyForQuery.
async fn complete<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    tag: &str,
) -> Outcome {
    conn.write_message(&BeMessage::CommandComplete(tag))?;
    conn.send_ready_for_query().await?;
    Ok(Next::Query)
}

/// Whether a slot write (if any) reached the disk.
async fn slot_stored(synced: Option<Synced>) -> bool {
    match synced {
        None => true,
        Some(rx) => matches!(rx.await, Ok(Ok(()))),
    }
}
