//! Users for the authentication tests: users-file lines written by `skctl
//! user`, and files only their owner may read.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const PROXY_PW: &str = "proxy secret: 'quoted' \\ and long";
pub const STANDBY_PW: &str = "standby-secret";

/// A users-file line from `skctl user NAME --role ROLE`, the password on
/// its stdin.
pub fn skctl_user(name: &str, role: &str, password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_skctl"))
        .args(["user", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        !line.contains(password) && line.contains(" SCRAM-SHA-256$4096:"),
        "skctl user prints a verifier, never the password: {line}"
    );
    line
}

/// A file only its owner may read (libpq ignores a looser password file).
pub fn private_file(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

/// proxy (proposer), standby (consumer).
pub fn users_file(dir: &Path) -> PathBuf {
    let text =
        skctl_user("proxy", "proposer", PROXY_PW) + &skctl_user("standby", "consumer", STANDBY_PW);
    private_file(&dir.join("users"), &text)
}
