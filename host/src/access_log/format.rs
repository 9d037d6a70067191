//! Envoy's substitution format strings: `%OPERATOR(arg):max_len%`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::StreamInfo;

/// A parsed access log format.
#[derive(Debug, Clone)]
pub enum Format {
    Text(Vec<Segment>),
    Json(Vec<(String, JsonField)>),
}

#[derive(Debug, Clone)]
pub enum JsonField {
    Format(Vec<Segment>),
    Nested(Vec<(String, JsonField)>),
    Literal(serde_json::Value),
}

#[derive(Debug, Clone)]
pub enum Segment {
    Literal(String),
    Operator {
        op: Operator,
        max_len: Option<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    StartTime(Option<String>),
    BytesReceived,
    BytesSent,
    Duration,
    ResponseFlags,
    ResponseCode,
    Protocol,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    ConnectionId,
    Hostname,
    LocalReplyBody,
    /// `%REQ(A?B)%`: the first of the named request headers present.
    Request(Vec<String>),
    /// `%RESP(A?B)%`.
    Response(Vec<String>),
    /// Trailers are not kept: `-`.
    Trailer,
    /// An operator Envoy knows whose value wasp does not track: `-`.
    Unavailable,
}

const UNAVAILABLE: &[&str] = &[
    "ROUTE_NAME",
    "RESPONSE_CODE_DETAILS",
    "CONNECTION_TERMINATION_DETAILS",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "REQUESTED_SERVER_NAME",
    "REQUEST_DURATION",
    "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "DYNAMIC_METADATA",
    "FILTER_STATE",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_TLS_VERSION",
];

impl Format {
    pub fn text(s: &str) -> Result<Format, String> {
        parse(s).map(Format::Text)
    }

    pub fn json(map: &serde_json::Map<String, serde_json::Value>) -> Result<Format, String> {
        json_fields(map).map(Format::Json)
    }

    /// One log entry.
    pub fn render(&self, info: &StreamInfo) -> String {
        match self {
            Format::Text(segments) => {
                let mut out = String::with_capacity(128);
                render_segments(segments, info, &mut out);
                out
            }
            Format::Json(fields) => {
                let mut line = json_object(fields, info).to_string();
                line.push('\n');
                line
            }
        }
    }
}

fn json_fields(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, JsonField)>, String> {
    map.iter()
        .map(|(k, v)| {
            let field = match v {
                serde_json::Value::String(s) => JsonField::Format(parse(s)?),
                serde_json::Value::Object(o) => JsonField::Nested(json_fields(o)?),
                other => JsonField::Literal(other.clone()),
            };
            Ok((k.clone(), field))
        })
        .collect()
}

fn json_object(fields: &[(String, JsonField)], info: &StreamInfo) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, field) in fields {
        let v = match field {
            JsonField::Literal(v) => v.clone(),
            JsonField::Nested(inner) => json_object(inner, info),
            JsonField::Format(segments) => {
                let mut s = String::new();
                render_segments(segments, info, &mut s);
                // A lone numeric operator is logged as a number, a missing
                // value as null, as Envoy's JSON formatter does.
                match segments.as_slice() {
                    [Segment::Operator { .. }] if s == "-" => serde_json::Value::Null,
                    [Segment::Operator { op, .. }] if is_numeric(op) => s
                        .parse::<u64>()
                        .map_or(serde_json::Value::String(s), Into::into),
                    _ => serde_json::Value::String(s),
                }
            }
        };
        map.insert(k.clone(), v);
    }
    serde_json::Value::Object(map)
}

fn is_numeric(op: &Operator) -> bool {
    matches!(
        op,
        Operator::BytesReceived
            | Operator::BytesSent
            | Operator::Duration
            | Operator::ResponseCode
            | Operator::ConnectionId
    )
}

fn parse(s: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = s;
    while let Some(start) = rest.find('%') {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = operator_end(after)
            .ok_or_else(|| format!("unterminated command operator in format `{s}`"))?;
        let (op, max_len) = operator(&after[..end])?;
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        segments.push(Segment::Operator { op, max_len });
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// The position of the `%` closing an operator, skipping `%` inside `( )`
/// (START_TIME's own format uses them).
fn operator_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn operator(token: &str) -> Result<(Operator, Option<usize>), String> {
    let (body, max_len) = match token.rfind(':') {
        Some(i)
            if token[i + 1..].chars().all(|c| c.is_ascii_digit()) && token[..i].ends_with(')') =>
        {
            (
                &token[..i],
                Some(
                    token[i + 1..]
                        .parse()
                        .map_err(|_| format!("bad length in %{token}%"))?,
                ),
            )
        }
        _ => (token, None),
    };
    let (name, arg) = match body.find('(') {
        Some(i) if body.ends_with(')') => (&body[..i], Some(&body[i + 1..body.len() - 1])),
        _ => (body, None),
    };
    let op = match name {
        "START_TIME" => Operator::StartTime(arg.filter(|a| !a.is_empty()).map(str::to_string)),
        "BYTES_RECEIVED" => Operator::BytesReceived,
        "BYTES_SENT" => Operator::BytesSent,
        "DURATION" => Operator::Duration,
        "RESPONSE_FLAGS" => Operator::ResponseFlags,
        "RESPONSE_CODE" => Operator::ResponseCode,
        "PROTOCOL" => Operator::Protocol,
        "UPSTREAM_HOST" => Operator::UpstreamHost,
        "UPSTREAM_CLUSTER" => Operator::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Operator::UpstreamLocalAddress,
        "DOWNSTREAM_REMOTE_ADDRESS" => Operator::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Operator::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Operator::DownstreamDirectRemoteAddress,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Operator::DownstreamDirectRemoteAddressWithoutPort
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Operator::DownstreamLocalAddressWithoutPort,
        "CONNECTION_ID" => Operator::ConnectionId,
        "HOSTNAME" => Operator::Hostname,
        "LOCAL_REPLY_BODY" => Operator::LocalReplyBody,
        "REQ" | "RESP" | "TRAILER" if arg.is_some() => {
            let names = arg
                .unwrap_or_default()
                .split('?')
                .map(|n| n.to_ascii_lowercase())
                .collect();
            match name {
                "REQ" => Operator::Request(names),
                "RESP" => Operator::Response(names),
                _ => Operator::Trailer,
            }
        }
        n if UNAVAILABLE.contains(&n) => Operator::Unavailable,
        _ => return Err(format!("unknown command operator %{token}%")),
    };
    Ok((op, max_len))
}

fn render_segments(segments: &[Segment], info: &StreamInfo, out: &mut String) {
    for seg in segments {
        match seg {
            Segment::Literal(s) => out.push_str(s),
            Segment::Operator { op, max_len } => {
                let start = out.len();
                render_operator(op, info, out);
                if let Some(max) = max_len {
                    let mut cut = (start + max).min(out.len());
                    while !out.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    out.truncate(cut);
                }
            }
        }
    }
}

fn render_operator(op: &Operator, info: &StreamInfo, out: &mut String) {
    let _ = match op {
        Operator::StartTime(None) => {
            write!(out, "{}", humantime::format_rfc3339_millis(info.start_time))
        }
        Operator::StartTime(Some(f)) => {
            strftime(f, info.start_time, out);
            Ok(())
        }
        Operator::BytesReceived => write!(out, "{}", info.bytes_received),
        Operator::BytesSent => write!(out, "{}", info.bytes_sent),
        Operator::Duration => match info.duration {
            Some(d) => write!(out, "{}", d.as_millis()),
            None => write!(out, "{}", info.start.elapsed().as_millis()),
        },
        Operator::ResponseFlags => write!(out, "{}", info.response_flags),
        Operator::ResponseCode => {
            write!(out, "{}", info.http.as_ref().map_or(0, |h| h.response_code))
        }
        Operator::Protocol => out.write_str(info.http.as_ref().map_or("-", |h| h.protocol)),
        Operator::Request(names) => {
            let v = info
                .http
                .as_ref()
                .and_then(|h| names.iter().find_map(|n| h.request_header(n)));
            out.write_str(v.unwrap_or("-"))
        }
        Operator::Response(names) => {
            let v = info
                .http
                .as_ref()
                .and_then(|h| names.iter().find_map(|n| h.response_header(n)));
            out.write_str(v.unwrap_or("-"))
        }
        Operator::UpstreamHost => opt(out, info.upstream_host),
        Operator::UpstreamLocalAddress => opt(out, info.upstream_local),
        Operator::UpstreamCluster => match &info.upstream_cluster {
            Some(c) => out.write_str(c),
            None => out.write_str("-"),
        },
        Operator::DownstreamRemoteAddress => write!(out, "{}", info.downstream_remote),
        Operator::DownstreamRemoteAddressWithoutPort => {
            write!(out, "{}", info.downstream_remote.ip())
        }
        Operator::DownstreamDirectRemoteAddress => write!(out, "{}", info.downstream_direct_remote),
        Operator::DownstreamDirectRemoteAddressWithoutPort => {
            write!(out, "{}", info.downstream_direct_remote.ip())
        }
        Operator::DownstreamLocalAddress => write!(out, "{}", info.downstream_local),
        Operator::DownstreamLocalAddressWithoutPort => {
            write!(out, "{}", info.downstream_local.ip())
        }
        Operator::ConnectionId => write!(out, "{}", info.connection_id),
        Operator::Hostname => out.write_str(hostname()),
        Operator::LocalReplyBody => match info.http.as_ref().map(|h| h.local_reply_body.as_str()) {
            Some(body) if !body.is_empty() => out.write_str(body),
            _ => out.write_str("-"),
        },
        Operator::Trailer | Operator::Unavailable => out.write_str("-"),
    };
}

fn opt(out: &mut String, v: Option<std::net::SocketAddr>) -> std::fmt::Result {
    match v {
        Some(a) => write!(out, "{a}"),
        None => out.write_str("-"),
    }
}

fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "-".to_string())
    })
}

/// The strftime subset Envoy configs use, in UTC: `%Y %m %d %H %M %S %s %z
/// %Z %T %F %j`, and Envoy's `%E<n>S` / `%f` for fractional seconds.
fn strftime(f: &str, t: SystemTime, out: &mut String) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86400) as i64);
    let (h, m, s) = ((secs % 86400) / 3600, (secs % 3600) / 60, secs % 60);
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year:04}"),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('H') => write!(out, "{h:02}"),
            Some('M') => write!(out, "{m:02}"),
            Some('S') => write!(out, "{s:02}"),
            Some('s') => write!(out, "{secs}"),
            Some('z') => out.write_str("+0000"),
            Some('Z') => out.write_str("UTC"),
            Some('T') => write!(out, "{h:02}:{m:02}:{s:02}"),
            Some('F') => write!(out, "{year:04}-{month:02}-{day:02}"),
            Some('f') => write!(out, "{:09}", since.subsec_nanos()),
            Some('E') => {
                let mut digits = 0usize;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    digits = digits * 10 + d as usize;
                    chars.next();
                }
                match chars.next() {
                    Some('S') => {
                        let frac = format!("{:09}", since.subsec_nanos());
                        let digits = digits.min(9);
                        if digits == 0 {
                            write!(out, "{s:02}")
                        } else {
                            write!(out, "{s:02}.{}", &frac[..digits])
                        }
                    }
                    Some('s') => write!(out, "{secs}"),
                    _ => Ok(()),
                }
            }
            Some('%') => out.write_str("%"),
            Some(other) => write!(out, "%{other}"),
            None => out.write_str("%"),
        };
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info() -> StreamInfo {
        let mut i = StreamInfo::new(
            7,
            "10.0.0.1:5555".parse().unwrap(),
            "127.0.0.1:10000".parse().unwrap(),
        );
        i.start_time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        i.bytes_received = 10;
        i.bytes_sent = 20;
        i.duration = Some(Duration::from_millis(42));
        i.upstream_host = Some("127.0.0.1:8080".parse().unwrap());
        i
    }

    #[test]
    fn default_format_for_tcp_matches_envoy() {
        let f = Format::text(super::super::DEFAULT_FORMAT).unwrap();
        assert_eq!(
            f.render(&info()),
            "[2023-11-14T22:13:20.123Z] \"- - -\" 0 - 10 20 42 - \"-\" \"-\" \"-\" \"-\" \"127.0.0.1:8080\"\n"
        );
    }

    #[test]
    fn start_time_formats_and_lengths() {
        let f = Format::text("%START_TIME(%Y/%m/%dT%H:%M:%E3S)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST(x):3%").unwrap();
        assert_eq!(f.render(&info()), "2023/11/14T22:13:20.123 10.0.0.1 127");
    }

    #[test]
    fn http_fields_fill_the_default_format() {
        let mut i = info();
        let mut req = http::HeaderMap::new();
        req.insert("user-agent", "curl/8".parse().unwrap());
        req.insert("x-request-id", "abc".parse().unwrap());
        let mut resp = http::HeaderMap::new();
        resp.insert("x-envoy-upstream-service-time", "3".parse().unwrap());
        i.http = Some(Box::new(super::super::HttpInfo {
            method: "GET".into(),
            path: "/x?y".into(),
            authority: "example.com".into(),
            protocol: "HTTP/1.1",
            request_headers: req,
            response_code: 200,
            response_headers: resp,
            ..Default::default()
        }));
        let f = Format::text(super::super::DEFAULT_FORMAT).unwrap();
        assert_eq!(
            f.render(&i),
            "[2023-11-14T22:13:20.123Z] \"GET /x?y HTTP/1.1\" 200 - 10 20 42 3 \"-\" \"curl/8\" \"abc\" \"example.com\" \"127.0.0.1:8080\"\n"
        );
    }

    #[test]
    fn unknown_operators_are_rejected() {
        assert!(Format::text("%NOPE%").is_err());
        assert!(Format::text("%BYTES_SENT").is_err());
    }

    #[test]
    fn json_format_types_numbers() {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"sent":"%BYTES_SENT%","host":"%UPSTREAM_HOST%","path":"%REQ(:PATH)%"}"#,
        )
        .unwrap();
        let line = Format::json(&map).unwrap().render(&info());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["sent"], 20);
        assert_eq!(v["host"], "127.0.0.1:8080");
        assert!(v["path"].is_null());
    }
}
