//! Request path normalization, as Envoy's `normalize_path`,
//! `merge_slashes` and `path_with_escaped_slashes_action` do it before
//! filters and routing see a request (RFC 3986 dot segments, with the URL
//! canonicalization Envoy borrows from Chromium: backslashes are slashes,
//! escaped unreserved characters are decoded, a few characters are
//! escaped). The query is left alone.

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Left as they are.
    #[default]
    Keep,
    /// The request is refused (400).
    Reject,
    /// Decoded (to `/` and `\`) before the path is normalized.
    Unescape,
}

/// How a connection manager normalizes paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Normalization {
    pub dot_segments: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Normalization {
    pub fn is_off(&self) -> bool {
        *self == Normalization::default()
    }
}

/// The path is not one to serve (an escaped NUL, or an escaped slash
/// where they are refused).
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected;

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters a canonical path has escaped.
fn escaped_in_paths(b: u8) -> bool {
    matches!(b, b'|' | b'{' | b'}' | b'^' | b'"' | b'<' | b'>' | b'`')
}

/// The normalized form of `path_and_query`, or `None` when it is already
/// normal (the common case, found without allocating).
pub fn normalize(path_and_query: &str, how: Normalization) -> Result<Option<String>, Rejected> {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    let bytes = path.as_bytes();
    let suspicious = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            || b == b'\\'
            || escaped_in_paths(b)
            || (how.dot_segments && b == b'.' && i > 0 && bytes[i - 1] == b'/')
            || (how.merge_slashes && b == b'/' && bytes.get(i + 1) == Some(&b'/'))
    });
    if !suspicious {
        return Ok(None);
    }
    // Escapes first: decoded unreserved characters take part in dot
    // segments (`%2e%2e` is `..`).
    let mut canon = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(0) => return Err(Rejected),
            Some(c @ (b'/' | b'\\')) => match how.escaped_slashes {
                EscapedSlashes::Reject => return Err(Rejected),
                EscapedSlashes::Unescape => canon.push(if c == b'\\' { b'/' } else { c }),
                EscapedSlashes::Keep => canon.extend_from_slice(&bytes[i..i + 3]),
            },
            Some(c) if how.dot_segments && unreserved(c) => canon.push(c),
            Some(_) => canon.extend_from_slice(&bytes[i..i + 3]),
            None if b == b'\\' && how.dot_segments => canon.push(b'/'),
            None if escaped_in_paths(b) && how.dot_segments => {
                canon.extend_from_slice(format!("%{b:02X}").as_bytes());
            }
            None => canon.push(b),
        }
        i += if escape.is_some() { 3 } else { 1 };
    }
    if how.merge_slashes {
        canon.dedup_by(|b, a| *a == b'/' && *b == b'/');
    }
    if how.dot_segments {
        canon = remove_dot_segments(&canon);
    }
    let mut out = String::from_utf8(canon).map_err(|_| Rejected)?;
    out.push_str(query);
    Ok((out != path_and_query).then_some(out))
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` ones
/// take the segment before (never past the root); a path ending in
/// either ends with a slash.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            b"." | b".." => {
                if *seg == b".." {
                    segments.pop();
                }
                // `/a/b/..` is `/a/`: the directory, not `/a`.
                if i == last {
                    segments.push(b"");
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Envoy 1.40 sends upstream with `normalize_path: true` and
    /// `merge_slashes: true`, request by request.
    #[test]
    fn paths_normalize_as_envoy_normalizes_them() {
        let how = Normalization {
            dot_segments: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Keep,
        };
        let cases = [
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../a", "/a"),
            ("//a///b//", "/a/b/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/%41%7e%7E%2f%2F%20x", "/A~~%2f%2F%20x"),
            ("/a%5cb", "/a%5cb"),
            ("/a\\b", "/a/b"),
            ("/a/b?x=/../y//z", "/a/b?x=/../y//z"),
            ("/a/.%2e/b", "/b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/.../b", "/a/.../b"),
            ("/%zz", "/%zz"),
            ("/ab%3F?q", "/ab%3F?q"),
            ("/a/b/../../../c", "/c"),
            ("/.a/b", "/.a/b"),
            ("/a/%2f/b", "/a/%2f/b"),
            ("/a;b/../c", "/c"),
            ("/a/b/..?q=1", "/a/?q=1"),
            ("/%C3%A9", "/%C3%A9"),
            ("/a|b", "/a%7Cb"),
            ("/a{b}", "/a%7Bb%7D"),
            ("/a^b", "/a%5Eb"),
            ("/a\"b", "/a%22b"),
            ("/a<b>", "/a%3Cb%3E"),
            ("/a`b", "/a%60b"),
        ];
        for (given, want) in cases {
            let got = normalize(given, how)
                .unwrap()
                .unwrap_or_else(|| given.to_string());
            assert_eq!(got, want, "{given}");
        }
        assert_eq!(normalize("/a%00b", how), Err(Rejected));
        assert_eq!(normalize("/plain/path?x=1", how), Ok(None));
    }

    #[test]
    fn escaped_slashes_are_kept_refused_or_decoded() {
        let mut how = Normalization {
            dot_segments: true,
            ..Normalization::default()
        };
        how.escaped_slashes = EscapedSlashes::Reject;
        assert_eq!(normalize("/a%2Fb", how), Err(Rejected));
        how.escaped_slashes = EscapedSlashes::Unescape;
        assert_eq!(
            normalize("/a%2fb/%5C..", how).unwrap().as_deref(),
            Some("/a/b/")
        );
        // Merging alone leaves dots and escapes as they are.
        let merge = Normalization {
            merge_slashes: true,
            ..Normalization::default()
        };
        assert_eq!(
            normalize("//a/./%41", merge).unwrap().as_deref(),
            Some("/a/./%41")
        );
    }
}
