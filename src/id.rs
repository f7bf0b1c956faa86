//! Identities: tenant and timeline ids (16 bytes, written as 32 hex
//! characters) and safekeeper node ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected 32 hex characters")]
pub struct IdParseError {
    pub what: &'static str,
    pub text: String,
}

fn parse_hex16(what: &'static str, s: &str) -> Result<[u8; 16], IdParseError> {
    // The text is echoed in errors (and so in logs): a few dozen
    // characters of it say enough.
    let err = || IdParseError {
        what,
        text: crate::logging::clip(s, 40).into_owned(),
    };
    // Hex digits only: `u8::from_str_radix` alone would take a sign ("+f").
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
    }
    Ok(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! hex_id {
    ($name:ident, $what:literal) => {
        #[derive(
            Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex16($what, s).map($name)
            }
        }
    };
}

hex_id!(TenantId, "tenant id");
hex_id!(TimelineId, "timeline id");

/// A timeline's full identity: which tenant, which timeline.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ttid {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
}

impl Ttid {
    pub fn new(tenant_id: TenantId, timeline_id: TimelineId) -> Self {
        Ttid {
            tenant_id,
            timeline_id,
        }
    }

    /// The 32-byte key prefix every stored record of this timeline starts with.
    pub fn key_prefix(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..16].copy_from_slice(&self.tenant_id.0);
        k[16..].copy_from_slice(&self.timeline_id.0);
        k
    }
}

impl fmt::Display for Ttid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant_id, self.timeline_id)
    }
}

impl fmt::Debug for Ttid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Ttid {
    type Err = IdParseError;
    /// `TENANT/TIMELINE`, as skctl and the HTTP API write it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, l) = s.split_once('/').ok_or_else(|| IdParseError {
            what: "timeline (TENANT/TIMELINE)",
            text: s.to_string(),
        })?;
        Ok(Ttid::new(t.parse()?, l.parse()?))
    }
}

/// A safekeeper's node id, fixed for the life of its store.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_as_hex() {
        let text = "0123456789abcdef0123456789ABCDEF";
        let id: TenantId = text.parse().unwrap();
        assert_eq!(id.0[0], 0x01);
        assert_eq!(id.0[15], 0xef);
        assert_eq!(id.to_string(), text.to_lowercase());
        let ttid: Ttid = format!("{text}/{}", "00".repeat(16)).parse().unwrap();
        assert_eq!(ttid.timeline_id, TimelineId([0; 16]));
        assert_eq!(&ttid.key_prefix()[..16], &id.0);
    }

    #[test]
    fn ids_reject_bad_text() {
        for bad in [
            "",
            "00",
            &"0".repeat(31),
            &"0".repeat(33),
            &"g".repeat(32),
            "é".repeat(16).as_str(),
            // a sign is not a hex digit
            &format!("+f{}", "0".repeat(30)),
            &format!("{}+0", "0".repeat(30)),
            &format!("{}-0", "0".repeat(30)),
        ] {
            assert!(bad.parse::<TimelineId>().is_err(), "{bad:?}");
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?}");
        }
        // What an error echoes of the text is short.
        let e = "x".repeat(10_000).parse::<TenantId>().unwrap_err();
        assert!(e.to_string().len() < 120, "{e}");
        assert!("x".parse::<Ttid>().is_err());
    }
}
