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
    #[arg(
        long,
        value_name = "CONNSTR",
        required_unless_present_any = ["sync_only", "promote_check"],
        env = "WALKEEPER_PROXY_PRIMARY"
    )]
    primary: Option<String>,

    /// The timeline's safekeepers: ID@HOST:PORT,… (node ids as given to
    /// `safekeeper --init --node-id`).
    #[arg(long, value_name = "LIST", env = "WALKEEPER_PROXY_SAFEKEEPERS")]
    safekeepers: String,

    /// libpq key=value pairs for every connection to a safekeeper (not
    /// host or port: --safekeepers gives those): the proposer user and its
    /// password, e.g. "user=proxy passfile=/etc/walkeeper/pgpass", and TLS,
    /// e.g. "sslmode=verify-full sslrootcert=ca.crt" (sslcert/sslkey for a
    /// client certificate). Without password= the password comes from
    /// PGPASSWORD or the password file (passfile=, PGPASSFILE, ~/.pgpass);
    /// PGSSLMODE, PGSSLROOTCERT and the like apply where this is silent, as
    /// with libpq. The user is "walkeeper" unless given.
    #[arg(
        long,
        value_name = "CONNINFO",
        env = "WALKEEPER_SAFEKEEPER_CONNINFO",
        default_value = ""
    )]
    safekeeper_conninfo: String,

    /// Tenant id (32 hex characters).
    #[arg(
        long,
        value_name = "HEX",
        default_value = "00000000000000000000000000000001",
        env = "WALKEEPER_PROXY_TENANT_ID"
    )]
    tenant_id: TenantId,

    /// Timeline id (32 hex characters).
    #[arg(
        long,
        value_name = "HEX",
        default_value = "00000000000000000000000000000001",
        env = "WALKEEPER_PROXY_TIMELINE_ID"
    )]
    timeline_id: TimelineId,

    /// The physical replication slot on the primary (created when missing).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "safekeeper_proxy",
        env = "WALKEEPER_PROXY_SLOT"
    )]
    slot: String,

    /// application_name towards the primary: what synchronous_standby_names
    /// must name.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "safekeeper_proxy",
        env = "WALKEEPER_PROXY_APPLICATION_NAME"
    )]
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

    /// How long --sync-only (and --promote-check's settle) keeps trying
    /// (e.g. while safekeepers restart).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        env = "WALKEEPER_PROXY_SYNC_TIMEOUT"
    )]
    sync_timeout: u64,

    /// With the primary gone: settle the safekeepers as --sync-only does,
    /// then tell whether the standby given by --standby has replayed every
    /// acknowledged commit, so that promoting it loses none. Exit 0: safe
    /// to promote; 3: not safe (behind, not a standby, or another cluster);
    /// 1: the check could not be made. Raises the term: never run it while
    /// a primary's proxy is meant to commit.
    #[arg(
        long,
        requires = "standby",
        conflicts_with_all = ["primary", "create_timeline", "recreate_timeline_on", "sync_only"]
    )]
    promote_check: bool,

    /// The standby to check (libpq key=value or URI; an ordinary, not a
    /// replication, connection).
    #[arg(long, value_name = "CONNSTR", requires = "promote_check")]
    standby: Option<String>,

    /// Change the timeline's members to --safekeepers when they differ
    /// (joint consensus: new members catch up first, then a majority of the
    /// old and of the new set decide together, then the new set alone).
    /// Without it, a --safekeepers list other than the timeline's members
    /// is refused, so a mistyped list changes nothing.
    #[arg(long)]
    change_members: bool,

    /// How long --promote-check waits for the standby to replay up to the
    /// settled LSN before it answers "not safe".
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    promote_wait: u64,
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
        sync_only: args.sync_only || args.promote_check,
        safekeeper_conninfo: args.safekeeper_conninfo,
        change_members: args.change_members,
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
    if args.promote_check {
        let standby = match args.standby.as_deref().map(ConnConfig::parse) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                eprintln!("safekeeper-proxy: --standby: {e}");
                return ExitCode::from(2);
            }
            None => {
                eprintln!("safekeeper-proxy: --promote-check needs --standby");
                return ExitCode::from(2);
            }
        };
        let check = proxy::promote_check::run(
            config,
            standby,
            std::time::Duration::from_secs(args.sync_timeout),
            std::time::Duration::from_secs(args.promote_wait),
        );
        return match runtime.block_on(check) {
            Ok((settled, verdict)) => {
                eprintln!("safekeeper-proxy: {settled}");
                println!("{verdict}");
                if verdict.is_safe() {
                    tracing::info!("{verdict}");
                    ExitCode::SUCCESS
                } else {
                    tracing::warn!("{verdict}");
                    ExitCode::from(3)
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("safekeeper-proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
