//! A consumer group's membership as stored in the offsets log (Kafka's group metadata
//! record): generation, protocol, leader and every member with its assignment, so a
//! restarted coordinator carries on with the same generation and members.
//!
//! Encoding, big-endian: `version u8 (1) | generation i32 | protocol_type opt | protocol opt
//! | leader opt | members u32 | member*`; a member is `id str | instance_id opt | client_id
//! str | client_host str | session_ms u32 | rebalance_ms u32 | assignment bytes |
//! protocols u16 | (name str | metadata bytes)*`. `str` is `u16 len | utf-8`, `opt` is
//! `i16 len (-1: none) | utf-8`, `bytes` is `u32 len | bytes`.

use bytes::{BufMut, Bytes, BytesMut};

const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub assignment: Bytes,
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<MemberRecord>,
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = s
        .as_bytes()
        .get(..s.len().min(u16::MAX as usize))
        .unwrap_or_default();
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn put_opt(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            let b = s
                .as_bytes()
                .get(..s.len().min(i16::MAX as usize))
                .unwrap_or_default();
            out.put_i16(b.len() as i16);
            out.put_slice(b);
        }
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

impl GroupRecord {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(VERSION);
        out.put_i32(self.generation);
        put_opt(&mut out, self.protocol_type.as_deref());
        put_opt(&mut out, self.protocol.as_deref());
        put_opt(&mut out, self.leader.as_deref());
        out.put_u32(self.members.len() as u32);
        for m in &self.members {
            put_str(&mut out, &m.id);
            put_opt(&mut out, m.instance_id.as_deref());
            put_str(&mut out, &m.client_id);
            put_str(&mut out, &m.client_host);
            out.put_u32(m.session_timeout_ms);
            out.put_u32(m.rebalance_timeout_ms);
            put_bytes(&mut out, &m.assignment);
            out.put_u16(m.protocols.len().min(u16::MAX as usize) as u16);
            for (name, metadata) in m.protocols.iter().take(u16::MAX as usize) {
                put_str(&mut out, name);
                put_bytes(&mut out, metadata);
            }
        }
        out.freeze()
    }

    /// `None` for bytes this version does not read (a damaged or newer record).
    pub fn decode(bytes: &Bytes) -> Option<GroupRecord> {
        let mut r = Reader { bytes, at: 0 };
        if r.u8()? != VERSION {
            return None;
        }
        let generation = r.i32()?;
        let protocol_type = r.opt()?;
        let protocol = r.opt()?;
        let leader = r.opt()?;
        let count = r.u32()? as usize;
        // Every member takes at least 23 bytes: a lying count cannot reserve more.
        let mut members = Vec::with_capacity(count.min(bytes.len() / 23));
        for _ in 0..count {
            let id = r.str()?;
            let instance_id = r.opt()?;
            let client_id = r.str()?;
            let client_host = r.str()?;
            let session_timeout_ms = r.u32()?;
            let rebalance_timeout_ms = r.u32()?;
            let assignment = r.bytes()?;
            let n = r.u16()? as usize;
            let mut protocols = Vec::with_capacity(n.min(bytes.len() / 6));
            for _ in 0..n {
                protocols.push((r.str()?, r.bytes()?));
            }
            members.push(MemberRecord {
                id,
                instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                assignment,
                protocols,
            });
        }
        (r.at == bytes.len()).then_some(GroupRecord {
            generation,
            protocol_type,
            protocol,
            leader,
            members,
        })
    }
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.at.checked_add(n)?;
        if end > self.bytes.len() {
            return None;
        }
        let out = self.bytes.slice(self.at..end);
        self.at = end;
        Some(out)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.as_ref().try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<String>> {
        let n = i16::from_be_bytes(self.array()?);
        if n < 0 {
            return Some(None);
        }
        Some(Some(
            String::from_utf8(self.take(n as usize)?.to_vec()).ok()?,
        ))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_damaged_bytes_are_refused() {
        let record = GroupRecord {
            generation: 7,
            protocol_type: Some("consumer".into()),
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            members: vec![
                MemberRecord {
                    id: "m1".into(),
                    instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 30_000,
                    assignment: Bytes::from_static(b"\x00\x01a"),
                    protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
                },
                MemberRecord {
                    id: "m2".into(),
                    instance_id: Some("static-2".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 6_000,
                    rebalance_timeout_ms: 6_000,
                    assignment: Bytes::new(),
                    protocols: vec![],
                },
            ],
        };
        let bytes = record.encode();
        assert_eq!(GroupRecord::decode(&bytes), Some(record));
        for cut in 0..bytes.len() {
            assert_eq!(
                GroupRecord::decode(&bytes.slice(..cut)),
                None,
                "cut at {cut}"
            );
        }
        let mut lying = bytes.to_vec();
        // The member count claims four billion members.
        lying.splice(
            1 + 4 + 2 + 8 + 2 + 5 + 2 + 2..1 + 4 + 2 + 8 + 2 + 5 + 2 + 2 + 4,
            [0xff; 4],
        );
        assert_eq!(GroupRecord::decode(&Bytes::from(lying)), None);
    }
}
