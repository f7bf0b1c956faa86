//! libpq-style connection strings: `key=value` lists and `postgresql://`
//! URIs, with the environment's defaults (`PGHOST`, `PGPORT`, ...).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::tls::client::TlsKeys;

use super::{ClientError, SslMode};

/// libpq's floor for `connect_timeout`: shorter values are unreliable.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_USER: &str = "postgres";
pub const DEFAULT_HOST: &str = "localhost";

/// A parsed connection string.
///
/// Multi-host strings (`host=a,b port=1,2`) are accepted but only the first
/// host (and first port) is used: the proxy is given one primary.
/// Without `password=` or `$PGPASSWORD`, the password comes from the
/// password file (`passfile=`, `$PGPASSFILE` or `~/.pgpass`) when the
/// server asks for one.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Host name, IP address, or a Unix-socket directory (starts with `/`).
    pub host: String,
    /// Numeric address to connect to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// libpq's `passfile`: where to look for a password not given.
    pub passfile: Option<std::path::PathBuf>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    /// Command-line options for the server (`-c name=value ...`).
    pub options: Option<String>,
    /// `None`: no limit beyond the operating system's.
    pub connect_timeout: Option<Duration>,
    pub sslmode: SslMode,
    /// Keepalive and unacknowledged-data bounds on a TCP connection (not a
    /// conninfo keyword: the proxy sets it for its safekeeper connections).
    pub tcp_liveness: Option<crate::pq::liveness::TcpLiveness>,
    /// `sslrootcert`, `sslcert`, `sslkey`.
    pub tls_keys: TlsKeys,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("sslmode", &self.sslmode)
            .field("tcp_liveness", &self.tcp_liveness)
            .field("tls_keys", &self.tls_keys)
            .finish()
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            host: DEFAULT_HOST.into(),
            hostaddr: None,
            port: DEFAULT_PORT,
            user: DEFAULT_USER.into(),
            password: None,
            passfile: None,
            dbname: None,
            application_name: None,
            options: None,
            connect_timeout: None,
            sslmode: SslMode::default(),
            tcp_liveness: None,
            tls_keys: TlsKeys::default(),
        }
    }
}

/// libpq keywords that are valid but mean nothing to this client.
const IGNORED_KEYWORDS: &[&str] = &[
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "load_balance_hosts",
    "client_encoding",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslpassword",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "krbsrvname",
    "gsslib",
    "service",
    "replication",
];

impl ConnConfig {
    /// Parses a libpq connection string, taking defaults from the
    /// environment (`PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER`,
    /// `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGOPTIONS`,
    /// `PGCONNECT_TIMEOUT`, `PGSSLMODE`) for what it leaves out.
    pub fn parse(s: &str) -> Result<ConnConfig, ClientError> {
        Self::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// [`ConnConfig::parse`] with an explicit environment.
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, ClientError> {
        let pairs = if is_uri(s) {
            parse_uri(s)?
        } else {
            parse_keyword_value(s)?
        };
        let mut given: HashMap<String, String> = HashMap::new();
        for (k, v) in pairs {
            given.insert(k, v);
        }
        let get = |key: &str, var: &str| -> Option<String> {
            given
                .get(key)
                .cloned()
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };

        let mut cfg = ConnConfig::default();
        for key in given.keys() {
            let known = matches!(
                key.as_str(),
                "host"
                    | "hostaddr"
                    | "port"
                    | "user"
                    | "password"
                    | "passfile"
                    | "dbname"
                    | "application_name"
                    | "fallback_application_name"
                    | "options"
                    | "connect_timeout"
                    | "sslmode"
                    | "sslrootcert"
                    | "sslcert"
                    | "sslkey"
                    | "gssencmode"
                    | "channel_binding"
            ) || IGNORED_KEYWORDS.contains(&key.as_str());
            if !known {
                return Err(ClientError::Config(format!(
                    "invalid connection option \"{key}\""
                )));
            }
        }
        if let Some(h) = get("host", "PGHOST") {
            cfg.host = first_of_list(&h).to_string();
            if cfg.host.is_empty() {
                cfg.host = DEFAULT_HOST.into();
            }
        }
        if let Some(a) = get("hostaddr", "PGHOSTADDR") {
            let a = first_of_list(&a);
            cfg.hostaddr = Some(a.parse().map_err(|_| {
                ClientError::Config(format!(
                    "invalid hostaddr \"{a}\": not a numeric IP address"
                ))
            })?);
        }
        if let Some(p) = get("port", "PGPORT") {
            let p = first_of_list(&p).trim();
            cfg.port = match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(ClientError::Config(format!("invalid port number: \"{p}\""))),
            };
        }
        if let Some(u) = get("user", "PGUSER") {
            cfg.user = u;
        }
        cfg.password = given.get("password").cloned().or_else(|| env("PGPASSWORD"));
        cfg.passfile = get("passfile", "PGPASSFILE")
            .map(std::path::PathBuf::from)
            .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")));
        cfg.dbname = get("dbname", "PGDATABASE");
        cfg.application_name = get("application_name", "PGAPPNAME")
            .or_else(|| given.get("fallback_application_name").cloned());
        cfg.options = get("options", "PGOPTIONS");
        if let Some(t) = get("connect_timeout", "PGCONNECT_TIMEOUT") {
            let secs: i64 = t.trim().parse().map_err(|_| {
                ClientError::Config(format!("invalid connect_timeout value: \"{t}\""))
            })?;
            cfg.connect_timeout = (secs > 0)
                .then(|| Duration::from_secs(secs.unsigned_abs()).max(MIN_CONNECT_TIMEOUT));
        }
        if let Some(m) = get("sslmode", "PGSSLMODE") {
            cfg.sslmode = SslMode::parse(&m)
                .ok_or_else(|| ClientError::Config(format!("invalid sslmode value: \"{m}\"")))?;
        }
        cfg.tls_keys = TlsKeys {
            sslrootcert: get("sslrootcert", "PGSSLROOTCERT").map(Into::into),
            sslcert: get("sslcert", "PGSSLCERT").map(Into::into),
            sslkey: get("sslkey", "PGSSLKEY").map(Into::into),
        };
        if let Some(m) = get("gssencmode", "PGGSSENCMODE") {
            match m.as_str() {
                "disable" | "prefer" => {}
                "require" => {
                    return Err(ClientError::Config(
                        "gssencmode=require is not supported: this client does not do GSSAPI \
                         encryption"
                            .into(),
                    ))
                }
                _ => {
                    return Err(ClientError::Config(format!(
                        "invalid gssencmode value: \"{m}\""
                    )))
                }
            }
        }
        if let Some(m) = get("channel_binding", "PGCHANNELBINDING") {
            match m.as_str() {
                "disable" | "prefer" => {}
                "require" => {
                    return Err(ClientError::Config(
                        "channel_binding=require is not supported: this client does not do SCRAM channel binding".into(),
                    ))
                }
                _ => {
                    return Err(ClientError::Config(format!(
                        "invalid channel_binding value: \"{m}\""
                    )))
                }
            }
        }
        Ok(cfg)
    }

    /// Where this connects, for messages.
    pub fn address(&self) -> String {
        if let Some(a) = self.hostaddr {
            return SocketAddr::new(a, self.port).to_string();
        }
        if self.host.starts_with('/') {
            return self.unix_socket_path();
        }
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(super) fn unix_socket_path(&self) -> String {
        format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
    }
}

fn first_of_list(v: &str) -> &str {
    v.split(',').next().unwrap_or("")
}

fn is_uri(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, ClientError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|&c| c != '=' && !c.is_whitespace())
        {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if chars.get(i) != Some(&'=') {
            return Err(ClientError::Config(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if chars.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ClientError::Config(
                            "unterminated quoted string in connection info string".into(),
                        ))
                    }
                    Some('\\') => {
                        if let Some(&c) = chars.get(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&c) = chars.get(i) {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    if let Some(&n) = chars.get(i + 1) {
                        value.push(n);
                    }
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, ClientError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ClientError::Config(format!("invalid percent-encoded token: \"{s}\""))
                })?;
            if hex == 0 {
                return Err(ClientError::Config(format!(
                    "forbidden value %00 in percent-encoded value: \"{s}\""
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ClientError::Config(format!("percent-encoded value is not UTF-8: \"{s}\"")))
}

fn parse_uri(s: &str) -> Result<Vec<(String, String)>, ClientError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .unwrap_or(s);
    let mut out = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    // A password may itself contain '@' only percent-encoded, so the last
    // '@' ends the user info.
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, pw) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), percent_decode(user)?));
            }
            if let Some(pw) = pw {
                out.push(("password".into(), percent_decode(pw)?));
            }
            hosts
        }
        None => authority,
    };
    let first = first_of_list(hosts);
    let (host, port) = if let Some(bracketed) = first.strip_prefix('[') {
        let (h, after) = bracketed.split_once(']').ok_or_else(|| {
            ClientError::Config(format!(
                "missing \"]\" in IPv6 host address in URI: \"{s}\""
            ))
        })?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ClientError::Config(format!(
                    "unexpected character after IPv6 host address in URI: \"{s}\""
                ))
            })?),
        };
        (h.to_string(), port)
    } else {
        match first.split_once(':') {
            Some((h, p)) => (percent_decode(h)?, Some(p)),
            None => (percent_decode(first)?, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".into(), host));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".into(), percent_decode(p)?));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db)?));
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ClientError::Config(format!(
                "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
            ))
        })?;
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        // libpq's JDBC-compatible spelling.
        if k == "ssl" && v == "true" {
            out.push(("sslmode".into(), "require".into()));
        } else {
            out.push((k, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> ConnConfig {
        ConnConfig::parse_with_env(s, env_none).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn parse_err(s: &str) -> String {
        ConnConfig::parse_with_env(s, env_none)
            .expect_err(s)
            .to_string()
    }

    #[test]
    fn keyword_value_defaults() {
        let c = parse("");
        assert_eq!(c, ConnConfig::default());
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 5432);
        assert_eq!(c.user, "postgres");
        assert_eq!(c.password, None);
        assert_eq!(c.sslmode, SslMode::Prefer);
    }

    #[test]
    fn keyword_value_all_keys() {
        let c = parse(
            "host=db.example hostaddr=10.0.0.5 port=5433 user=repl password=s3cret \
             dbname=postgres application_name=safekeeper_proxy \
             options='-c wal_sender_timeout=5s' connect_timeout=10 sslmode=disable",
        );
        assert_eq!(c.host, "db.example");
        assert_eq!(c.hostaddr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "repl");
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.application_name.as_deref(), Some("safekeeper_proxy"));
        assert_eq!(c.options.as_deref(), Some("-c wal_sender_timeout=5s"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.address(), "10.0.0.5:5433");
        // the password stays out of Debug output
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn keyword_value_quoting_and_escapes() {
        let c = parse(r"  password = 'it\'s a \\ pw'   user=a\ b  options = ''  ");
        assert_eq!(c.password.as_deref(), Some(r"it's a \ pw"));
        assert_eq!(c.user, "a b");
        assert_eq!(c.options, None, "an empty value means unset");
        let c = parse("host='' port = 6000");
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 6000);
        let c = parse("password=''");
        assert_eq!(c.password.as_deref(), Some(""));
    }

    #[test]
    fn keyword_value_errors() {
        assert!(parse_err("host").contains("missing \"=\" after \"host\""));
        assert!(parse_err("host=a port").contains("missing \"=\""));
        assert!(parse_err("password='abc").contains("unterminated"));
        assert!(parse_err("bogus=1").contains("invalid connection option \"bogus\""));
        assert!(parse_err("port=0").contains("invalid port"));
        assert!(parse_err("port=70000").contains("invalid port"));
        assert!(parse_err("port=x").contains("invalid port"));
        assert!(parse_err("hostaddr=db.example").contains("hostaddr"));
        assert!(parse_err("connect_timeout=soon").contains("connect_timeout"));
        assert!(parse_err("sslmode=sometimes").contains("invalid sslmode"));
        assert!(parse_err("channel_binding=require").contains("channel binding"));
        assert!(parse_err("gssencmode=require").contains("GSSAPI"));
    }

    #[test]
    fn keyword_value_accepts_ssl_modes_and_keys_and_ignored_keys() {
        assert_eq!(parse("sslmode=allow").sslmode, SslMode::Allow);
        assert_eq!(parse("sslmode=prefer").sslmode, SslMode::Prefer);
        assert_eq!(parse("sslmode=require").sslmode, SslMode::Require);
        assert_eq!(parse("sslmode=verify-ca").sslmode, SslMode::VerifyCa);
        let c = parse("sslmode=verify-full sslrootcert=/ca.crt sslcert=/c.crt sslkey=/c.key");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(
            c.tls_keys,
            TlsKeys {
                sslrootcert: Some("/ca.crt".into()),
                sslcert: Some("/c.crt".into()),
                sslkey: Some("/c.key".into()),
            }
        );
        let c = parse("keepalives=1 target_session_attrs=any gssencmode=disable");
        assert_eq!(c.host, "localhost");
    }

    #[test]
    fn multi_host_takes_the_first() {
        let c = parse("host=a.example,b.example port=5433,5434 hostaddr=127.0.0.2,127.0.0.3");
        assert_eq!(c.host, "a.example");
        assert_eq!(c.port, 5433);
        assert_eq!(c.hostaddr, Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        assert_eq!(parse("connect_timeout=0").connect_timeout, None);
        assert_eq!(parse("connect_timeout=-3").connect_timeout, None);
        assert_eq!(
            parse("connect_timeout=1").connect_timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn environment_defaults() {
        let env = |name: &str| match name {
            "PGUSER" => Some("envuser".to_string()),
            "PGPASSWORD" => Some("envpw".to_string()),
            "PGPORT" => Some("6543".to_string()),
            "PGHOST" => Some("envhost".to_string()),
            _ => None,
        };
        let c = ConnConfig::parse_with_env("application_name=x", env).unwrap();
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.port, 6543);
        assert_eq!(c.host, "envhost");
        // the string wins over the environment
        let c = ConnConfig::parse_with_env("user=u password=p port=1 host=h", env).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_deref()), ("u", Some("p")));
        assert_eq!((c.host.as_str(), c.port), ("h", 1));
        let tls = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGSSLROOTCERT" => Some("/ca.crt".to_string()),
            _ => None,
        };
        let c = ConnConfig::parse_with_env("", tls).unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.tls_keys.sslrootcert, Some("/ca.crt".into()));
        let bad = |name: &str| (name == "PGSSLMODE").then(|| "always".to_string());
        assert!(ConnConfig::parse_with_env("", bad).is_err());
    }

    #[test]
    fn uris() {
        let c = parse("postgresql://repl:p%40ss@db.example:5433/postgres?application_name=x&connect_timeout=5");
        assert_eq!(c.user, "repl");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.application_name.as_deref(), Some("x"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));

        let c = parse("postgres://");
        assert_eq!(c, ConnConfig::default());
        let c = parse("postgresql://u@h");
        assert_eq!((c.user.as_str(), c.host.as_str(), c.port), ("u", "h", 5432));
        assert_eq!(c.password, None);
        let c = parse("postgresql://[::1]:6000/db");
        assert_eq!((c.host.as_str(), c.port), ("::1", 6000));
        assert_eq!(c.address(), "[::1]:6000");
        let c = parse("postgresql://h1:1,h2:2/db");
        assert_eq!((c.host.as_str(), c.port), ("h1", 1));
        let c = parse("postgresql:///db?host=%2Ftmp&port=7000&options=-c%20a%3Db");
        assert_eq!(c.host, "/tmp");
        assert_eq!(c.address(), "/tmp/.s.PGSQL.7000");
        assert_eq!(c.options.as_deref(), Some("-c a=b"));
        let c = parse("postgresql://h?sslmode=disable");
        assert_eq!(c.sslmode, SslMode::Disable);

        assert_eq!(parse("postgresql://h?ssl=true").sslmode, SslMode::Require);
        assert_eq!(
            parse("postgresql://h?sslmode=verify-ca").sslmode,
            SslMode::VerifyCa
        );
        assert!(parse_err("postgresql://h?bogus=1").contains("bogus"));
        assert!(parse_err("postgresql://h?novalue").contains("separator"));
        assert!(parse_err("postgresql://h/%zz").contains("percent"));
        assert!(parse_err("postgresql://h/%00").contains("%00"));
        assert!(parse_err("postgresql://[::1/db").contains("]"));
        assert!(parse_err("postgresql://h:port/db").contains("invalid port"));
    }
}
