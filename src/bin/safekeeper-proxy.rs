//! `safekeeper-proxy`: runs beside a PostgreSQL primary and makes its commits
//! wait for a majority of safekeepers. Parses flags, calls the library.

use std::process::ExitCode;

use clap::Parser;
use walkeeper::consensus::proposer::parse_members;
use walkeeper::id::{TenantId, TimelineId, Ttid};
use walkeeper::pq::client::ConnConfig;
use walkeeper::proxy::{self, Config};

/// Streams WAL from a PostgreSQL primary (as a physical replication client
/// with its own slot) to a quorum of safekeepers, and reports the
/// majority-flushed LSN back as its flush position. Set
/// `synchronous_standby_names = 'safekeeper_proxy'` on the primary so that
/// commits wait for a majority of safekeepers.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Connection string of the primary (libpq key=value or URI), e.g.
    /// "host=127.0.0.1 port=5432 user=postgres".
    #[arg(long, value_name = "CONNSTR", required_unless_present = "sync_only")]
    primary: Option<String>,

    /// The timeline's safekeepers: ID@HOST:PORT,… (node ids as given to
    /// `safekeeper --init --node-id`).
    #[arg(long, value_name = "LIST")]
    safekeepers: String,

    /// Tenant id (32 hex characters).
    #[arg(
        long,
        value_name = "HEX",
        default_value = "00000000000000000000000000000001"
    )]
    tenant_id: TenantId,

    /// Timeline id (32 hex characters).
    #[arg(
        long,
        value_name = "HEX",
        default_value = "00000000000000000000000000000001"
    )]
    timeline_id: TimelineId,

    /// The physical replication slot on the primary (created when missing).
    #[arg(long, value_name = "NAME", default_value = "safekeeper_proxy")]
    slot: String,

    /// application_name towards the primary: what synchronous_standby_names
    /// must name.
    #[arg(long, value_name = "NAME", default_value = "safekeeper_proxy")]
    application_name: String,

    /// Create the timeline on every safekeeper (all must be reachable and
    /// answer that they lack it); it starts at the segment holding the
    /// slot's restart LSN. Done once: when any safekeeper holds the
    /// timeline, nothing is created.
    #[arg(long)]
    create_timeline: bool,

    /// Re-create the timeline on safekeeper ID, whose store was lost and
    /// re-initialised (`safekeeper --init`): once this proxy has committed
    /// WAL in its term without that node, the node gets the timeline anew
    /// and catches up from its peers. Once per node and proxy process;
    /// repeat the flag for several nodes (fewer than half the members).
    #[arg(long, value_name = "ID")]
    recreate_timeline_on: Vec<u64>,

    /// Without a primary: elect, bring a majority of safekeepers to the end
    /// of the WAL they hold, commit it, wait until that majority persisted
    /// the commit, print the LSN and exit 0. Run it when primary and proxy
    /// are both gone, so consumers can read every acknowledged commit.
    #[arg(long, conflicts_with_all = ["primary", "create_timeline", "recreate_timeline_on"])]
    sync_only: bool,

    /// libpq keys of every connection to a safekeeper, host and port
    /// excepted (they come from --safekeepers): TLS with "sslmode=verify-full
    /// sslrootcert=ca.crt" (and sslcert/sslkey for a client certificate).
    /// PGSSLMODE, PGSSLROOTCERT and the like apply where this is silent.
    #[arg(
        long,
        value_name = "CONNSTR",
        env = "WALKEEPER_SAFEKEEPER_CONNINFO",
        default_value = ""
    )]
    safekeeper_conninfo: String,

    /// How long --sync-only keeps trying (e.g. while safekeepers restart).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    sync_timeout: u64,
}

fn main() -> ExitCode {
    walkeeper::logging::init();
    let args = Args::parse();
    let members = match parse_members(&args.safekeepers) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("safekeeper-proxy: --safekeepers: {e}");
            return ExitCode::from(2);
        }
    };
    let primary = match args.primary.as_deref().map(ConnConfig::parse) {
        None => None,
        Some(Ok(mut c)) => {
            c.application_name = Some(args.application_name);
            Some(c)
        }
        Some(Err(e)) => {
            eprintln!("safekeeper-proxy: --primary: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(id) = args
        .recreate_timeline_on
        .iter()
        .find(|id| !members.contains_key(&walkeeper::id::NodeId(**id)))
    {
        eprintln!("safekeeper-proxy: --recreate-timeline-on {id}: not among --safekeepers");
        return ExitCode::from(2);
    }
    if let Some(addr) = members.values().next() {
        if let Err(e) = walkeeper::proxy::safekeepers::conn_config(&args.safekeeper_conninfo, addr)
        {
            eprintln!("safekeeper-proxy: {e}");
            return ExitCode::from(2);
        }
    }
    let config = Config {
        primary,
        sync_only: args.sync_only,
        safekeeper_conninfo: args.safekeeper_conninfo,
        members,
        ttid: Ttid::new(args.tenant_id, args.timeline_id),
        slot: args.slot,
        create_timeline: args.create_timeline,
        recreate_timeline_on: args
            .recreate_timeline_on
            .iter()
            .map(|id| walkeeper::id::NodeId(*id))
            .collect(),
        proposer_id: proxy::new_proposer_id(),
    };
    // One thread: the proxy's work per commit is small, and its tasks (the
    // primary's reader, the session, one writer and reader per safekeeper)
    // hand every message to each other; on one thread a hand-over is a
    // queue push instead of a cross-thread wake-up.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("safekeeper-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.sync_only {
        let within = std::time::Duration::from_secs(args.sync_timeout);
        return match runtime.block_on(proxy::run_sync_only(config, within)) {
            Ok(settled) => {
                tracing::info!(commit_lsn = %settled.lsn, "synced: a majority holds and has committed the WAL up to this LSN");
                eprintln!("safekeeper-proxy: {settled}");
                println!("{}", settled.lsn);
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("safekeeper-proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(proxy::run(config, walkeeper::shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("safekeeper-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
