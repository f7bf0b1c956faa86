//! Backend messages as the client reads them (sans-IO): whole frames off a
//! buffer, ErrorResponse fields, DataRows.

use bytes::{Buf, Bytes, BytesMut};

use super::ClientError;

/// CopyData carries XLogData (PostgreSQL cuts at 128 KiB) and safekeeper
/// messages (about 1 MiB of WAL); DataRow may carry a timeline history file.
/// Generous, but a garbage length must not make us wait for gigabytes.
const MAX_LARGE_MESSAGE_LEN: usize = 64 << 20;
/// Every other backend message (errors, notices, parameter status, ...).
const MAX_MESSAGE_LEN: usize = 1 << 20;

/// A backend message: its type byte and body (length word stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) tag: u8,
    pub(crate) body: Bytes,
}

/// Takes one whole backend message off the front of `buf`; `Ok(None)` (and
/// nothing consumed) until all of it is buffered.
pub(crate) fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(format!(
            "invalid length {len} of message type {:?}",
            tag as char
        ));
    }
    let len = len as usize;
    let max = if matches!(tag, b'd' | b'D') {
        MAX_LARGE_MESSAGE_LEN
    } else {
        MAX_MESSAGE_LEN
    };
    if len > max {
        return Err(format!(
            "message type {:?} of {len} bytes exceeds the limit of {max}",
            tag as char
        ));
    }
    if buf.len() < len + 1 {
        // Room for the rest of the frame, but a claimed length alone must
        // not make us allocate much before the bytes arrive.
        buf.reserve((len + 1 - buf.len()).min(MAX_MESSAGE_LEN));
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1).freeze();
    frame.advance(5);
    Ok(Some(Frame { tag, body: frame }))
}

pub(super) fn take_cstr(b: &mut Bytes) -> Result<Bytes, String> {
    let nul = b
        .iter()
        .position(|&c| c == 0)
        .ok_or("missing string terminator")?;
    let s = b.split_to(nul);
    b.advance(1);
    Ok(s)
}

pub(super) fn take_i32(b: &mut Bytes) -> Result<i32, String> {
    if b.len() < 4 {
        return Err("message too short".into());
    }
    Ok(b.get_i32())
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Default)]
pub(crate) struct ErrorFields {
    pub(super) severity: Option<String>,
    pub(super) severity_nonlocalized: Option<String>,
    pub(super) code: Option<String>,
    pub(super) message: Option<String>,
    pub(super) detail: Option<String>,
    pub(super) hint: Option<String>,
}

pub(crate) fn parse_error_fields(mut body: Bytes) -> Result<ErrorFields, String> {
    let mut f = ErrorFields::default();
    loop {
        if body.is_empty() {
            return Err("error fields without terminator".into());
        }
        let code = body.get_u8();
        if code == 0 {
            return Ok(f);
        }
        let v = lossy(&take_cstr(&mut body)?);
        match code {
            b'S' => f.severity = Some(v),
            b'V' => f.severity_nonlocalized = Some(v),
            b'C' => f.code = Some(v),
            b'M' => f.message = Some(v),
            b'D' => f.detail = Some(v),
            b'H' => f.hint = Some(v),
            _ => {}
        }
    }
}

impl ErrorFields {
    pub(super) fn into_error(self) -> ClientError {
        ClientError::Server {
            severity: self
                .severity_nonlocalized
                .or(self.severity)
                .unwrap_or_else(|| "ERROR".into()),
            code: self.code.unwrap_or_else(|| "XX000".into()),
            message: self.message.unwrap_or_default(),
            detail: self.detail,
            hint: self.hint,
        }
    }
}

pub(crate) fn parse_data_row(mut body: Bytes) -> Result<Vec<Option<Bytes>>, String> {
    if body.len() < 2 {
        return Err("DataRow too short".into());
    }
    let n = body.get_i16();
    if n < 0 {
        return Err(format!("DataRow with {n} columns"));
    }
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = take_i32(&mut body)?;
        if len == -1 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("DataRow column length {len}"))?;
        if body.len() < len {
            return Err("DataRow column runs past the message".into());
        }
        row.push(Some(body.split_to(len)));
    }
    if !body.is_empty() {
        return Err("data after the last DataRow column".into());
    }
    Ok(row)
}

pub(super) fn text_row(row: Vec<Option<Bytes>>) -> Vec<Option<String>> {
    row.into_iter().map(|v| v.map(|b| lossy(&b))).collect()
}

/// A backend message as bytes (tests).
#[cfg(test)]
pub(super) fn be(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![tag];
    b.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    b.extend_from_slice(body);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn frames_need_whole_messages_and_sane_lengths() {
        let msg = be(b'Z', b"I");
        for cut in 0..msg.len() {
            let mut b = BytesMut::from(&msg[..cut]);
            assert_eq!(parse_frame(&mut b).unwrap(), None);
            assert_eq!(b.len(), cut);
        }
        let mut b = BytesMut::from(&msg[..]);
        let f = parse_frame(&mut b).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        for len in [i32::MIN, -1, 0, 3] {
            let mut b = BytesMut::new();
            b.put_u8(b'E');
            b.put_i32(len);
            assert!(parse_frame(&mut b).is_err());
        }
        let mut b = BytesMut::new();
        b.put_u8(b'E');
        b.put_i32(MAX_MESSAGE_LEN as i32 + 1);
        assert!(parse_frame(&mut b).is_err());
        let mut b = BytesMut::new();
        b.put_u8(b'd');
        b.put_i32(i32::MAX);
        assert!(parse_frame(&mut b).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse_data_row(Bytes::from_static(b"\x00")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\xff\xff")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x01\x00\x00\x00\x05ab")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x01\xff\xff\xff\xfe")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x01\x00\x00")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x00x")).is_err());
        assert_eq!(
            parse_data_row(Bytes::from_static(
                b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff"
            ))
            .unwrap(),
            vec![Some(Bytes::from_static(b"ab")), None]
        );
        assert!(parse_error_fields(Bytes::from_static(b"SERROR")).is_err());
        assert!(parse_error_fields(Bytes::from_static(b"SERROR\0")).is_err());
        let e = parse_error_fields(Bytes::from_static(
            b"SFEHLER\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0Dd\0\0",
        ))
        .unwrap()
        .into_error();
        assert_eq!(e.sqlstate(), Some("55006"));
        assert_eq!(
            e.to_string(),
            "ERROR 55006: replication slot \"s\" is active for PID 7 (DETAIL: d)"
        );
    }
}
