//! The header-map wire format (spec "Serialization"): `u32 N`, then N
//! `(u32 key_len, u32 value_len)`, then each key and value NUL-terminated.

use bytes::Bytes;

/// Largest serialized map accepted from a guest (Envoy's limit).
const MAX_BYTES: usize = 1 << 20;
/// Most pairs accepted from a guest (Envoy's limit).
const MAX_PAIRS: usize = 1024;

/// Serializes pairs; an empty list is zero bytes.
pub fn serialize<'a, I>(pairs: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let n = pairs.clone().into_iter().count();
    if n == 0 {
        return Vec::new();
    }
    let size: usize = 4 + pairs
        .clone()
        .into_iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses pairs; malformed or oversized input is `None`. Empty input (or a
/// lone NUL) is an empty map.
pub fn deserialize(data: &[u8]) -> Option<Vec<(String, Bytes)>> {
    if data.is_empty() || data == [0] {
        return Some(Vec::new());
    }
    if data.len() > MAX_BYTES || data.len() < 4 {
        return None;
    }
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let n = u32_at(0)?;
    if n > MAX_PAIRS {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut take = |len: usize| -> Option<&[u8]> {
        let s = data.get(at..at.checked_add(len)?)?;
        if *data.get(at + len)? != 0 {
            return None;
        }
        at += len + 1;
        Some(s)
    };
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let k = String::from_utf8_lossy(take(kl)?).into_owned();
        let v = Bytes::copy_from_slice(take(vl)?);
        out.push((k, v));
    }
    (at == data.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_example() {
        let bytes = serialize([(&b"a"[..], &b"1"[..]), (b"b", b"22")]);
        assert_eq!(bytes.len(), 29);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[20..], b"a\x001\x00b\x0022\x00");
        let back = deserialize(&bytes).unwrap();
        assert_eq!(
            back,
            vec![
                ("a".into(), Bytes::from("1")),
                ("b".into(), Bytes::from("22"))
            ]
        );
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(deserialize(&[1, 0, 0, 0, 5, 0, 0, 0]).is_none());
        let mut bytes = serialize([(&b"a"[..], &b"1"[..])]);
        bytes.push(7);
        assert!(deserialize(&bytes).is_none());
        assert!(deserialize(&[0xff, 0xff, 0xff, 0xff]).is_none());
        assert_eq!(deserialize(&[]), Some(vec![]));
    }
}
