//! libpq's password file (`~/.pgpass`, `$PGPASSFILE`, `passfile=`): lines
//! `hostname:port:database:username:password`, `*` matching anything, `\`
//! escaping `:` and `\`; the first matching line wins. As libpq, a file
//! others may read or write is ignored with a warning.

use std::path::Path;

/// What a connection is matched on.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password of the first line of `path` matching `target`; `None`
/// when the file is missing, unsafe or has no such line.
pub fn lookup(path: &Path, target: Target<'_>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less: ignored"
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    find(&text, target)
}

/// [`lookup`] on the file's text.
pub fn find(text: &str, target: Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host, &port, target.database, target.user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(split_line)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(f, w)| f == "*" || f == w)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// The five fields of a line, unescaped; `None` for a line with fewer.
/// The password is everything after the fourth separator.
fn split_line(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::with_capacity(5);
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target {
        host: "10.0.0.2",
        port: 5454,
        database: "replication",
        user: "proxy",
    };

    #[test]
    fn first_matching_line_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    10.0.0.1:5454:*:proxy:other\n\
                    10.0.0.2:*:replication:proxy:pa\\:ss\\\\wo:rd\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, T).as_deref(), Some("pa:ss\\wo:rd"));
        let other = Target {
            user: "standby",
            ..T
        };
        assert_eq!(find(text, other).as_deref(), Some("fallback"));
        assert_eq!(find("short:line\n", T), None);
        assert_eq!(find("", T), None);
    }

    #[test]
    fn a_file_others_may_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, T).as_deref(), Some("pw"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&path, T), None);
        assert_eq!(lookup(&dir.path().join("missing"), T), None);
    }
}
