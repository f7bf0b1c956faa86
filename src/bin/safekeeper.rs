//! `safekeeper`: the WAL safekeeper daemon. Parses flags, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use walkeeper::id::NodeId;
use walkeeper::safekeeper::limits::{self, Limits};
use walkeeper::safekeeper::{self, Config};

/// A WAL safekeeper for PostgreSQL: stores WAL pushed by safekeeper-proxy
/// durably in RocksDB and serves committed WAL over PostgreSQL's streaming
/// replication protocol (to pg_receivewal, a standby, a page server).
///
/// Listeners bind to loopback by default, where clients are trusted. A
/// non-loopback address needs --users-file (PostgreSQL port) and
/// --http-token-file (HTTP port), or --insecure-no-auth.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Directory of this node's store (a RocksDB database).
    #[arg(long, short = 'D', value_name = "DIR", env = "WALKEEPER_DATADIR")]
    datadir: PathBuf,

    /// Create a new, empty store in DATADIR (needs --node-id). Without it a
    /// missing or empty store is refused, so a wiped node cannot silently
    /// rejoin under its old id with no memory of its votes.
    #[arg(long)]
    init: bool,

    /// This node's id, as listed in the proxy's --safekeepers ID@HOST:PORT.
    /// Recorded by --init; checked against the store afterwards.
    #[arg(long, value_name = "N", env = "WALKEEPER_NODE_ID")]
    node_id: Option<u64>,

    /// Address of the PostgreSQL-protocol port (proposers and consumers).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:5454",
        env = "WALKEEPER_LISTEN_PG"
    )]
    listen_pg: SocketAddr,

    /// Address of the HTTP port (status, metrics, checkpoints).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:7676",
        env = "WALKEEPER_LISTEN_HTTP"
    )]
    listen_http: SocketAddr,

    /// Whole-cluster recovery from checkpoints: act as an acceptor on a
    /// store restored from a checkpoint. Only when every proposer is stopped
    /// and every node of the cluster was restored; then run
    /// `safekeeper-proxy --sync-only`, which clears the restore mark.
    #[arg(long)]
    restore_cluster: bool,

    /// WAL always kept below the commit LSN, whatever consumers confirmed,
    /// so late consumers without a slot still find recent WAL: a size (the
    /// last 1GB, 512MB; a bare number is bytes) or a duration (WAL committed
    /// less than 30s, 10min, 1h, 2d ago); 0 keeps none. Commit times are
    /// remembered in memory only: after a start nothing is trimmed by age
    /// until the daemon has run that long. --max-wal-keep caps either.
    #[arg(long, value_name = "SIZE|DURATION", default_value = "1GB", value_parser = safekeeper::retention::parse_retention, env = "WALKEEPER_WAL_RETENTION")]
    wal_retention: safekeeper::retention::Retention,

    /// Most WAL below the commit LSN that slots and lagging peers may hold
    /// back; a slot needing more is invalidated (as with PostgreSQL's
    /// max_slot_wal_keep_size).
    #[arg(long, value_name = "SIZE", default_value = "4GB", value_parser = safekeeper::retention::parse_size, env = "WALKEEPER_MAX_WAL_KEEP")]
    max_wal_keep: u64,

    /// Bytes per second that RocksDB's background work (memtable flushes,
    /// compactions) may write, e.g. 32MB; 0 means no limit. For a disk
    /// shared with other fsyncing processes (a primary, other
    /// safekeepers): an unlimited flush writes 64 MiB at once and stalls
    /// their fsyncs, and the commits waiting on them, for its duration.
    /// Set it well above the peak WAL rate: if flushes fall behind the WAL,
    /// RocksDB stalls the safekeeper's writes instead.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = safekeeper::parse_background_write_limit, env = "WALKEEPER_BACKGROUND_WRITE_LIMIT")]
    background_write_limit: u64,

    /// Most connections on the PostgreSQL-protocol port at once: proposers,
    /// consumers and clients still starting up alike (PostgreSQL's
    /// max_connections). One more is answered FATAL 53300 "sorry, too many
    /// clients already". A proxy holds one per timeline and node.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections, value_parser = at_least_one(), env = "WALKEEPER_MAX_CONNECTIONS")]
    max_connections: usize,

    /// Most consumers streaming WAL at once (START_REPLICATION; proposers'
    /// recovery reads are not counted). One more is answered 53300.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_wal_senders, env = "WALKEEPER_MAX_WAL_SENDERS")]
    max_wal_senders: usize,

    /// Most replication slots, every timeline's together, temporary ones
    /// included. Creating one more is answered 53400.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_replication_slots, env = "WALKEEPER_MAX_REPLICATION_SLOTS")]
    max_replication_slots: usize,

    /// Most timelines this node holds; a greeting creating one more is
    /// answered 53400.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_timelines, env = "WALKEEPER_MAX_TIMELINES")]
    max_timelines: usize,

    /// A connection on the PostgreSQL-protocol port that has not finished
    /// its start-up in this time is closed (PostgreSQL's
    /// authentication_timeout): 1s to 600s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = limits::parse_timeout, env = "WALKEEPER_AUTHENTICATION_TIMEOUT")]
    authentication_timeout: Duration,

    /// Most connections on the HTTP port at once; one more is answered 503.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_http_connections, value_parser = at_least_one(), env = "WALKEEPER_MAX_HTTP_CONNECTIONS")]
    max_http_connections: usize,

    /// An HTTP connection that has not sent a request's headers (or a
    /// request's body) in this time is closed, idle ones between requests
    /// too: 1s to 600s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = limits::parse_timeout, env = "WALKEEPER_HTTP_HEADER_TIMEOUT")]
    http_header_timeout: Duration,

    /// Directory under which POST /v1/checkpoint may create checkpoints
    /// (created if missing; on the store's filesystem, as checkpoints are
    /// hard links). Without it, checkpoints over HTTP are refused.
    #[arg(long, value_name = "DIR", env = "WALKEEPER_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,

    #[command(flatten)]
    access: safekeeper::auth::Access,

    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS (see README "Running on separate hosts"). Files are read at start
/// and again at every SIGHUP.
#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// PEM file of this node's certificate (then any intermediates). With
    /// it, clients asking for TLS (libpq sslmode=prefer and stronger) get
    /// it, and the HTTP port speaks HTTPS.
    #[arg(
        long,
        value_name = "FILE",
        env = "WALKEEPER_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM file of the certificate's private key (mode 0600 or less).
    #[arg(
        long,
        value_name = "FILE",
        env = "WALKEEPER_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// PEM file of the CAs whose client certificates are accepted: TLS
    /// clients without one are refused in the handshake.
    #[arg(
        long,
        value_name = "FILE",
        env = "WALKEEPER_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,

    /// Refuse connections in clear on the PostgreSQL-protocol port (FATAL
    /// 28000), as a pg_hba.conf `hostssl` line does; cancel requests
    /// excepted (libpq sends them in clear).
    #[arg(long, env = "WALKEEPER_TLS_REQUIRED", requires = "tls_cert")]
    tls_required: bool,

    /// With --tls-cert, whether the HTTP port speaks HTTPS (false: HTTP in
    /// clear, e.g. for a local metrics scraper).
    #[arg(long, value_name = "BOOL", env = "WALKEEPER_HTTP_TLS", default_value_t = true, action = clap::ArgAction::Set)]
    http_tls: bool,
}

impl TlsArgs {
    fn config(self) -> safekeeper::encryption::TlsConfig {
        let files = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(walkeeper::tls::server::TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            _ => None,
        };
        safekeeper::encryption::TlsConfig {
            files,
            required: self.tls_required,
            http: self.http_tls,
        }
    }
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

fn main() -> ExitCode {
    walkeeper::logging::init();
    let args = Args::parse();
    let config = Config {
        datadir: args.datadir,
        init: args.init,
        node_id: args.node_id.map(NodeId),
        listen_pg: args.listen_pg,
        listen_http: args.listen_http,
        restore_cluster: args.restore_cluster,
        store_tuning: walkeeper::store::rocks::StoreTuning {
            background_write_limit: (args.background_write_limit > 0)
                .then_some(args.background_write_limit),
        },
        retention: safekeeper::retention::RetentionConfig {
            retention: args.wal_retention,
            max_wal_keep: args.max_wal_keep,
        },
        limits: Limits {
            max_connections: args.max_connections,
            max_wal_senders: args.max_wal_senders,
            max_replication_slots: args.max_replication_slots,
            max_timelines: args.max_timelines,
            authentication_timeout: args.authentication_timeout,
            max_http_connections: args.max_http_connections,
            http_header_timeout: args.http_header_timeout,
        },
        checkpoint_dir: args.checkpoint_dir,
        access: args.access,
        tls: args.tls.config(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("safekeeper: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(safekeeper::run(config, walkeeper::shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("safekeeper: {e}");
            ExitCode::FAILURE
        }
    }
}
