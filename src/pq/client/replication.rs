//! The replication commands the proxy sends (`IDENTIFY_SYSTEM`, `SHOW`,
//! the slot commands, `TIMELINE_HISTORY`, `START_REPLICATION`) and their
//! answers.

use bytes::Bytes;

use crate::lsn::{is_valid_wal_seg_size, Lsn};

use super::{ClientError, PgClient};

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: u64,
    pub timeline: u32,
    pub xlogpos: Lsn,
    /// `None` on a physical replication connection.
    pub dbname: Option<String>,
}

/// `READ_REPLICATION_SLOT`'s answer for a slot that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSlotInfo {
    /// `physical` (or `logical`).
    pub slot_type: String,
    /// `None` for a physical slot that has not reserved WAL yet.
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<u32>,
}

/// Slot names as PostgreSQL allows them (`ReplicationSlotValidateName`),
/// which also makes them safe to splice into a command.
fn check_slot_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClientError::InvalidState(format!(
            "invalid replication slot name \"{name}\": use at most 63 lower case letters, \
             digits and underscores"
        )))
    }
}

/// Parses a `SHOW wal_segment_size` value such as `16MB` or `1GB`.
pub fn parse_wal_segment_size(v: &str) -> Option<u32> {
    let v = v.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = v.get(..digits)?.parse().ok()?;
    let mult: u64 = match v.get(digits..)?.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    let size = u32::try_from(n.checked_mul(mult)?).ok()?;
    is_valid_wal_seg_size(size).then_some(size)
}

impl PgClient {
    /// The first row of a single-row result, with at least `cols` columns.
    async fn one_row(&mut self, sql: &str, cols: usize) -> Result<Vec<Option<Bytes>>, ClientError> {
        let mut rows = self.simple_query_raw(sql).await?;
        if rows.len() != 1 || rows[0].len() < cols {
            return Err(self.reader.protocol(format!(
                "{sql}: expected 1 row of {cols} columns, got {} row(s) of {}",
                rows.len(),
                rows.first().map_or(0, Vec::len)
            )));
        }
        Ok(rows.swap_remove(0))
    }

    fn field<T: std::str::FromStr>(
        &self,
        what: &str,
        v: &Option<Bytes>,
    ) -> Result<Option<T>, ClientError> {
        let Some(b) = v else { return Ok(None) };
        let s = std::str::from_utf8(b)
            .map_err(|_| self.reader.protocol(format!("{what}: not UTF-8")))?;
        s.parse()
            .map(Some)
            .map_err(|_| self.reader.protocol(format!("{what}: cannot parse {s:?}")))
    }

    fn required<T: std::str::FromStr>(
        &self,
        what: &str,
        v: &Option<Bytes>,
    ) -> Result<T, ClientError> {
        self.field(what, v)?
            .ok_or_else(|| self.reader.protocol(format!("{what} is NULL")))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ClientError> {
        let row = self.one_row("IDENTIFY_SYSTEM", 4).await?;
        Ok(IdentifySystem {
            system_id: self.required("IDENTIFY_SYSTEM systemid", &row[0])?,
            timeline: self.required("IDENTIFY_SYSTEM timeline", &row[1])?,
            xlogpos: self.required("IDENTIFY_SYSTEM xlogpos", &row[2])?,
            dbname: self.field("IDENTIFY_SYSTEM dbname", &row[3])?,
        })
    }

    /// `SHOW name` (a setting name: letters, digits, `_` and `.`).
    pub async fn show(&mut self, name: &str) -> Result<String, ClientError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(ClientError::InvalidState(format!(
                "invalid setting name \"{name}\""
            )));
        }
        let row = self.one_row(&format!("SHOW {name}"), 1).await?;
        self.required(name, &row[0])
    }

    /// `SHOW wal_segment_size`, in bytes.
    pub async fn wal_segment_size(&mut self) -> Result<u32, ClientError> {
        let v = self.show("wal_segment_size").await?;
        parse_wal_segment_size(&v).ok_or_else(|| {
            self.reader
                .protocol(format!("invalid wal_segment_size {v:?}"))
        })
    }

    /// `READ_REPLICATION_SLOT`: `None` if there is no such slot.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<ReplicationSlotInfo>, ClientError> {
        check_slot_name(name)?;
        let row = self
            .one_row(&format!("READ_REPLICATION_SLOT \"{name}\""), 3)
            .await?;
        let Some(slot_type) = self.field::<String>("slot_type", &row[0])? else {
            return Ok(None);
        };
        Ok(Some(ReplicationSlotInfo {
            slot_type,
            restart_lsn: self.field("restart_lsn", &row[1])?,
            restart_tli: self.field("restart_tli", &row[2])?,
        }))
    }

    /// `CREATE_REPLICATION_SLOT "name" PHYSICAL [(RESERVE_WAL)]`. The answer's
    /// `consistent_point` is not returned: for a physical slot PostgreSQL 15
    /// reports 0/0 there (it is a logical slot's field), so read the restart
    /// LSN with [`PgClient::read_replication_slot`].
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        reserve_wal: bool,
    ) -> Result<(), ClientError> {
        check_slot_name(name)?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL{}",
            if reserve_wal { " (RESERVE_WAL)" } else { "" }
        );
        self.one_row(&sql, 2).await.map(drop)
    }

    /// `DROP_REPLICATION_SLOT "name" [WAIT]`.
    pub async fn drop_replication_slot(
        &mut self,
        name: &str,
        wait: bool,
    ) -> Result<(), ClientError> {
        check_slot_name(name)?;
        let sql = format!(
            "DROP_REPLICATION_SLOT \"{name}\"{}",
            if wait { " WAIT" } else { "" }
        );
        self.simple_query_raw(&sql).await.map(drop)
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and its bytes.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<(String, Bytes), ClientError> {
        let row = self.one_row(&format!("TIMELINE_HISTORY {tli}"), 2).await?;
        let filename: String = self.required("TIMELINE_HISTORY filename", &row[0])?;
        let content = row[1]
            .clone()
            .ok_or_else(|| self.reader.protocol("TIMELINE_HISTORY content is NULL"))?;
        Ok((filename, content))
    }

    /// `START_REPLICATION [SLOT "s"] PHYSICAL X/X [TIMELINE n]`, waiting for
    /// CopyBothResponse.
    pub async fn start_physical_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut sql = String::from("START_REPLICATION ");
        if let Some(s) = slot {
            check_slot_name(s)?;
            sql.push_str(&format!("SLOT \"{s}\" "));
        }
        sql.push_str(&format!("PHYSICAL {start}"));
        if let Some(t) = timeline {
            sql.push_str(&format!(" TIMELINE {t}"));
        }
        self.start_copy_both(&sql).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_segment_sizes() {
        assert_eq!(parse_wal_segment_size("16MB"), Some(16 << 20));
        assert_eq!(parse_wal_segment_size("1MB"), Some(1 << 20));
        assert_eq!(parse_wal_segment_size("1GB"), Some(1 << 30));
        assert_eq!(parse_wal_segment_size("65536kB"), Some(64 << 20));
        for bad in [
            "",
            "MB",
            "3MB",
            "2GB",
            "16 TB",
            "16mb",
            "-16MB",
            "99999999999999999999MB",
        ] {
            assert_eq!(parse_wal_segment_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn slot_names_are_checked() {
        assert!(check_slot_name("safekeeper_proxy_1").is_ok());
        for bad in ["", "Upper", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }
}
