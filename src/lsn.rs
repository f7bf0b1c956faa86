//! Log sequence numbers and WAL segment arithmetic, as PostgreSQL defines them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// PostgreSQL's WAL page size (XLOG_BLCKSZ); chunks sent to consumers are cut
/// at these boundaries.
pub const WAL_PAGE_SIZE: u64 = 8192;

/// The default `wal_segment_size` of PostgreSQL builds.
pub const DEFAULT_WAL_SEG_SIZE: u32 = 16 * 1024 * 1024;

/// A byte position in the WAL stream, printed the way PostgreSQL prints it
/// (`16/B374D848`: high and low 32 bits in upper-case hex).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    /// Number of the segment holding this LSN.
    pub fn segment_number(self, seg_size: u32) -> u64 {
        self.0 / seg_size as u64
    }

    /// Offset of this LSN inside its segment.
    pub fn segment_offset(self, seg_size: u32) -> u64 {
        self.0 % seg_size as u64
    }

    /// The first LSN of the segment holding this LSN.
    pub fn segment_start(self, seg_size: u32) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size))
    }

    pub fn is_segment_start(self, seg_size: u32) -> bool {
        self.segment_offset(seg_size) == 0
    }

    /// The first LSN of the page holding this LSN.
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.0 % WAL_PAGE_SIZE)
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// Bytes from `earlier` to `self`; zero when `earlier` is not earlier.
    pub fn distance_from(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// PostgreSQL's segment file name (`XLogFileName`): TLI, then the segment
    /// number split into "log id" and segment within it.
    pub fn segment_file_name(self, tli: u32, seg_size: u32) -> String {
        segment_file_name(tli, self.segment_number(seg_size), seg_size)
    }
}

/// `XLogFileName` for a segment number.
pub fn segment_file_name(tli: u32, segno: u64, seg_size: u32) -> String {
    let segs_per_id = 0x1_0000_0000u64 / seg_size as u64;
    format!(
        "{:08X}{:08X}{:08X}",
        tli,
        segno / segs_per_id,
        segno % segs_per_id
    )
}

/// Parse a segment file name back into (tli, segment number).
pub fn parse_segment_file_name(name: &str, seg_size: u32) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let segs_per_id = 0x1_0000_0000u64 / seg_size as u64;
    if seg >= segs_per_id {
        return None;
    }
    Some((tli, log * segs_per_id + seg))
}

/// Whether a `wal_segment_size` is one PostgreSQL accepts (a power of two
/// from 1 MiB to 1 GiB).
pub fn is_valid_wal_seg_size(size: u32) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers of at most 8 digits, like 16/B374D848")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn(((part(hi)? as u64) << 32) | part(lo)? as u64))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!("0/1000000".parse::<Lsn>().unwrap(), Lsn(0x100_0000));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn::MAX);
        // lower case is accepted, as PostgreSQL's pg_lsn_in does
        assert_eq!("a/b".parse::<Lsn>().unwrap(), Lsn(0xA_0000_000B));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "1/2/3",
            "g/0",
            "123456789/0",
            " 1/0",
            "-1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let seg = DEFAULT_WAL_SEG_SIZE;
        let lsn = Lsn(0x3_0000_0000 + 5 * seg as u64 + 123);
        assert_eq!(lsn.segment_number(seg), 0x300 + 5);
        assert_eq!(lsn.segment_offset(seg), 123);
        assert_eq!(lsn.segment_start(seg), Lsn(0x3_0000_0000 + 5 * seg as u64));
        assert!(lsn.segment_start(seg).is_segment_start(seg));
        assert!(!lsn.is_segment_start(seg));
        assert_eq!(Lsn(8192 * 3 + 1).page_start(), Lsn(8192 * 3));
    }

    #[test]
    fn segment_file_names_match_postgres() {
        let seg = DEFAULT_WAL_SEG_SIZE;
        assert_eq!(
            Lsn(0x100_0000).segment_file_name(1, seg),
            "000000010000000000000001"
        );
        assert_eq!(
            "16/B374D848"
                .parse::<Lsn>()
                .unwrap()
                .segment_file_name(1, seg),
            "0000000100000016000000B3"
        );
        // 1 GiB segments: four per log id
        assert_eq!(
            Lsn(0x1_C000_0000).segment_file_name(2, 1 << 30),
            "000000020000000100000003"
        );
        let (tli, segno) = parse_segment_file_name("0000000100000016000000B3", seg).unwrap();
        assert_eq!((tli, segno), (1, 0x16B3));
        assert!(parse_segment_file_name("000000010000001600000100", seg).is_none());
        assert!(parse_segment_file_name("00000001000000160000000", seg).is_none());
    }

    #[test]
    fn valid_segment_sizes() {
        assert!(is_valid_wal_seg_size(16 << 20));
        assert!(is_valid_wal_seg_size(1 << 20));
        assert!(is_valid_wal_seg_size(1 << 30));
        assert!(!is_valid_wal_seg_size(3 << 20));
        assert!(!is_valid_wal_seg_size(1 << 19));
    }
}
