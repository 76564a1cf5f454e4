//! Request and response heads: `httparse` does the tokenising, this module
//! adds what a proxy must refuse (RFC 9112 §6.3, §11.2): ambiguous framing,
//! bare CR or LF, control bytes, a missing, doubled or malformed Host, a
//! request target outside RFC 3986's characters.
//!
//! Pure functions over a byte slice: `Ok(None)` means more bytes are needed.
#![forbid(unsafe_code)]

pub use httparse::{EMPTY_HEADER, Header};

use super::body::Framing;

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with the reason given to the client.
    Malformed(&'static str),
    /// 414
    UriTooLong,
    /// 431
    HeadersTooLarge,
}

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug)]
pub struct Request<'h, 'b> {
    pub method: &'b str,
    /// The target as sent upstream: the origin form, even if the client used the absolute form.
    pub target: &'b str,
    /// `target` without its query.
    pub path: &'b str,
    /// The host to route on and to send upstream: the absolute-form
    /// authority, else the Host header (RFC 9112 §3.2.2).
    pub host: &'b str,
    /// The client sent the absolute form: `host` replaces its Host header.
    pub absolute: bool,
    pub minor_version: u8,
    pub headers: &'h [Header<'b>],
    pub head_len: usize,
    pub framing: Framing,
    pub conn: ConnectionOptions,
    pub expect_continue: bool,
    /// A protocol upgrade other than `h2c` was asked for (h2c is never tunnelled).
    pub upgrade: bool,
}

/// Longest Host accepted: a DNS name is at most 253 bytes.
pub const MAX_HOST: usize = 255;

/// Connection header lines a message may have; the rewrite drops what
/// they name, so a message with more is refused rather than half-read.
pub const MAX_CONNECTION_LINES: usize = 4;

/// What the Connection header(s) said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl Request<'_, '_> {
    /// Whether the client connection may carry another request.
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.conn.keep_alive && !self.conn.close
        } else {
            !self.conn.close
        }
    }

    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// Parses a request head from the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    limits: HeadLimits,
) -> Result<Option<Request<'h, 'b>>, HeadError> {
    match memchr::memchr(b'\n', buf) {
        Some(eol) if eol > limits.max_request_line => return Err(HeadError::UriTooLong),
        None if buf.len() > limits.max_request_line => return Err(HeadError::UriTooLong),
        _ => {}
    }
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(HeadError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
        Err(e) => return Err(HeadError::Malformed(httparse_reason(e))),
    };
    if head_len > limits.max_header_bytes {
        return Err(HeadError::HeadersTooLarge);
    }
    check_line_endings(&buf[..head_len])?;

    let method = req.method.unwrap_or("");
    let raw_target = req.path.unwrap_or("");
    let minor_version = req.version.unwrap_or(1);
    let headers: &'h [Header<'b>] = req.headers;

    let (authority, target) = split_target(raw_target, method)?;

    let mut host_header: Option<&'b str> = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut conn = ConnectionOptions::default();
    let mut connection_lines = 0;
    let mut expect_continue = false;
    let mut has_upgrade = false;

    for h in headers {
        check_value(h.value)?;
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::Malformed("repeated content-length"));
            }
            content_length = Some(
                parse_content_length(h.value)
                    .ok_or(HeadError::Malformed("content-length is not a number"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(HeadError::Malformed("repeated transfer-encoding"));
            }
            transfer_encoding = true;
            chunked = is_final_chunked(h.value);
            if !chunked {
                return Err(HeadError::Malformed(
                    "transfer-encoding must be chunked, applied last",
                ));
            }
        } else if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(HeadError::Malformed("repeated host"));
            }
            // Checked below, unless the target's authority replaces it.
            let v =
                std::str::from_utf8(h.value).map_err(|_| HeadError::Malformed("invalid host"))?;
            host_header = Some(v.trim_matches([' ', '\t']));
        } else if name.eq_ignore_ascii_case("connection") {
            connection_lines += 1;
            if connection_lines > MAX_CONNECTION_LINES {
                return Err(HeadError::Malformed("too many connection header lines"));
            }
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    conn.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    conn.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    conn.upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade |= tokens(h.value).any(|t| !is_h2c(t));
        }
    }

    if transfer_encoding && content_length.is_some() {
        return Err(HeadError::Malformed(
            "content-length together with transfer-encoding",
        ));
    }
    if transfer_encoding && minor_version == 0 {
        return Err(HeadError::Malformed(
            "transfer-encoding in an HTTP/1.0 request",
        ));
    }
    // An HTTP/1.1 request carries Host even with an absolute target, whose
    // authority then wins whatever Host says (RFC 9112 §3.2, §3.2.2).
    if host_header.is_none() && minor_version == 1 {
        return Err(HeadError::Malformed("missing host"));
    }
    let host = match (authority, host_header) {
        (Some(a), _) => a,
        (None, Some(h)) => {
            check_host(h.as_bytes())?;
            h
        }
        (None, None) => "",
    };

    let framing = if chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let path = match target.split('?').next() {
        Some("") | None => "/",
        Some(p) => p,
    };
    Ok(Some(Request {
        method,
        target,
        path,
        host,
        absolute: authority.is_some(),
        minor_version,
        headers,
        head_len,
        framing,
        conn,
        expect_continue,
        upgrade: has_upgrade && conn.upgrade && minor_version == 1,
    }))
}

/// Splits the target into the absolute form's authority, if any, and the
/// origin form. For "http://h?q" the origin form is "?q": its path is empty,
/// and whoever writes it sends "/?q".
fn split_target<'b>(
    target: &'b str,
    method: &str,
) -> Result<(Option<&'b str>, &'b str), HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid request target");
    if target.starts_with('/') {
        check_origin_form(target.as_bytes())?;
        return Ok((None, target));
    }
    if target == "*" && method == "OPTIONS" {
        return Ok((None, target));
    }
    let scheme_end = target.find("://").ok_or(INVALID)?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(INVALID);
    }
    let rest = &target[scheme_end + 3..];
    let (authority, origin) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    // No userinfo, and an http(s) URI's host is never empty (RFC 9110 §4.2).
    if authority.contains('@') {
        return Err(HeadError::Malformed("userinfo in request target"));
    }
    check_host(authority.as_bytes())?;
    if authority.is_empty() || authority.starts_with(':') {
        return Err(HeadError::Malformed("invalid host"));
    }
    check_origin_form(origin.as_bytes())?;
    Ok((
        Some(authority),
        if origin.is_empty() { "/" } else { origin },
    ))
}

/// RFC 3986's path-abempty [ "?" query ]: pchar, "/" and "?", with every
/// "%" starting a pct-encoded octet. A fragment ("#") never travels in a
/// request, and nothing else may appear unencoded.
fn check_origin_form(t: &[u8]) -> Result<(), HeadError> {
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        if b == b'%' {
            if !(t.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && t.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return Err(HeadError::Malformed("invalid percent-encoding in target"));
            }
            i += 3;
            continue;
        }
        if !(is_unreserved_or_sub_delim(b) || matches!(b, b':' | b'@' | b'/' | b'?')) {
            return Err(HeadError::Malformed("invalid request target"));
        }
        i += 1;
    }
    Ok(())
}

/// ALPHA DIGIT "-" "." "_" "~" and "!" "$" "&" "'" "(" ")" "*" "+" "," ";" "=".
fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal
/// in brackets, or a reg-name (which may be empty, and covers IPv4), then
/// at most one port of digits.
pub fn check_host(h: &[u8]) -> Result<(), HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid host");
    if h.len() > MAX_HOST {
        return Err(HeadError::Malformed("host too long"));
    }
    let port = if let Some(literal) = h.strip_prefix(b"[") {
        let end = memchr::memchr(b']', literal).ok_or(INVALID)?;
        if !is_ip_literal(&literal[..end]) {
            return Err(INVALID);
        }
        match &literal[end + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(INVALID),
        }
    } else {
        let (name, port) = match memchr::memchr(b':', h) {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        };
        let mut i = 0;
        while i < name.len() {
            if name[i] == b'%' {
                let hex = name.get(i + 1..i + 3).ok_or(INVALID)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(INVALID);
                }
                i += 3;
            } else if is_unreserved_or_sub_delim(name[i]) {
                i += 1;
            } else {
                return Err(INVALID);
            }
        }
        port
    };
    match port {
        Some(p) if p.len() > 5 || !p.iter().all(u8::is_ascii_digit) => Err(INVALID),
        Some(p) if p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) > 65535 => Err(INVALID),
        _ => Ok(()),
    }
}

/// IPv6address or IPvFuture, between the brackets.
fn is_ip_literal(lit: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = lit {
        let Some(dot) = memchr::memchr(b'.', rest) else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| is_unreserved_or_sub_delim(b) || b == b':');
    }
    std::str::from_utf8(lit).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// `h2c` (HTTP/2 over cleartext) in an Upgrade list: never tunnelled, as a
/// backend that speaks it would take the tunnel past every check here.
pub fn is_h2c(protocol: &[u8]) -> bool {
    let name = protocol.split(|&b| b == b'/').next().unwrap_or(protocol);
    name.eq_ignore_ascii_case(b"h2c")
}

/// Every LF must end a CRLF and every CR must start one.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    for i in memchr::memchr2_iter(b'\r', b'\n', head) {
        let ok = match head[i] {
            b'\n' => i > 0 && head[i - 1] == b'\r',
            _ => head.get(i + 1) == Some(&b'\n'),
        };
        if !ok {
            return Err(HeadError::Malformed("bare CR or LF in head"));
        }
    }
    Ok(())
}

fn check_value(v: &[u8]) -> Result<(), HeadError> {
    if v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HeadError::Malformed("control character in header value"));
    }
    Ok(())
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn is_final_chunked(v: &[u8]) -> bool {
    let mut last = None;
    for t in tokens(v) {
        last = Some(t);
    }
    last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        && tokens(v)
            .filter(|t| t.eq_ignore_ascii_case(b"chunked"))
            .count()
            == 1
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

#[derive(Debug)]
pub struct Response<'h, 'b> {
    pub status: u16,
    pub reason: &'b str,
    pub headers: &'h [Header<'b>],
    pub head_len: usize,
    pub framing: Framing,
    /// The upstream may carry another request on this connection.
    pub keep_alive: bool,
}

/// Why a response head was refused: always a 502 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses a response head to a request of `method`.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    head_request: bool,
    max_header_bytes: usize,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => {
            return Err(BadResponse("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(BadResponse(httparse_reason(e))),
    };
    let status = resp.code.unwrap_or(0);
    // httparse takes any three digits; only 100..=599 are statuses (RFC 9110 §15).
    if !(100..=599).contains(&status) {
        return Err(BadResponse("invalid status"));
    }
    let minor_version = resp.version.unwrap_or(1);
    let headers: &'h [Header<'b>] = resp.headers;
    let mut content_length = None;
    let mut transfer_encoding = None;
    let mut close = minor_version == 0;
    let mut connection_lines = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or(BadResponse("invalid content-length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(BadResponse("conflicting content-length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(BadResponse("repeated transfer-encoding"));
            }
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_lines += 1;
            if connection_lines > MAX_CONNECTION_LINES {
                return Err(BadResponse("too many connection header lines"));
            }
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && minor_version == 0 {
                    close = false;
                }
            }
        }
    }
    if transfer_encoding.is_some() && content_length.is_some() {
        return Err(BadResponse(
            "content-length together with transfer-encoding",
        ));
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else if let Some(te) = transfer_encoding {
        if is_final_chunked(te) {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(Response {
        status,
        reason: resp.reason.unwrap_or(""),
        headers,
        head_len,
        keep_alive: !close && framing != Framing::Close,
        framing,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 100,
        max_header_bytes: 400,
    };

    fn parse(raw: &str) -> Result<Option<(String, String, Framing, bool)>, HeadError> {
        let mut h = [httparse::EMPTY_HEADER; 16];
        parse_request(raw.as_bytes(), &mut h, LIMITS).map(|r| {
            r.map(|r| {
                (
                    r.target.to_string(),
                    r.host.to_string(),
                    r.framing,
                    r.keep_alive(),
                )
            })
        })
    }

    fn malformed(raw: &str) -> &'static str {
        match parse(raw) {
            Err(HeadError::Malformed(m)) => m,
            other => panic!("{raw:?} gave {other:?}"),
        }
    }

    #[test]
    fn simple_request() {
        let r = parse("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r, ("/a?b".into(), "x".into(), Framing::None, true));
        let r = parse("POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.2, Framing::Length(5));
        assert!(!r.3, "HTTP/1.0 closes by default");
    }

    #[test]
    fn every_split_point_is_incomplete_until_the_end() {
        let raw = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        for i in 0..raw.len() {
            assert_eq!(parse(&raw[..i]).unwrap(), None, "split at {i}");
        }
        assert_eq!(parse(raw).unwrap().unwrap().2, Framing::Chunked);
    }

    #[test]
    fn absolute_form() {
        let r = parse("GET http://example.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.0.as_str(), r.1.as_str()), ("/p?q", "example.com:81"));
    }

    #[test]
    fn smuggling_is_refused() {
        let cases = [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: a\r\nConnection: b\r\nConnection: c\r\n\
             Connection: d\r\nConnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX Y: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX\x01: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        ];
        for c in cases {
            malformed(c);
        }
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let host_of = |raw: &str| parse(raw).unwrap().unwrap();
        // RFC 9112 §3.2.2: whatever Host says, empty included.
        for host_line in ["Host: other\r\n", "Host:\r\n", "Host: a b\r\n"] {
            let r = host_of(&format!(
                "GET http://a.example/p HTTP/1.1\r\n{host_line}\r\n"
            ));
            assert_eq!(
                (r.0.as_str(), r.1.as_str()),
                ("/p", "a.example"),
                "{host_line}"
            );
        }
        let r = host_of("GET HTTP://a.example HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (r.0.as_str(), r.1.as_str()),
            ("/", "a.example"),
            "scheme in any case"
        );
        let r = host_of("GET http://a.example?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.0, "?q=1", "an empty path: the writer adds the slash");
        let r = host_of("GET https://[::1]:8443/x HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.1, "[::1]:8443");
        for bad in [
            "GET http:///p HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://:80/p HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://u:p@a.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://a.example:8x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\n\r\n",
            "GET ws://a.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            malformed(bad);
        }
    }

    #[test]
    fn host_syntax() {
        for good in [
            "h",
            "h:80",
            "h:",
            "",
            "a-b.c_d~e",
            "127.0.0.1:8080",
            "[::1]",
            "[2001:db8::1]:443",
            "[v1.x:y]",
            "%41b",
            "x!$&'()*+,;=",
        ] {
            assert_eq!(check_host(good.as_bytes()), Ok(()), "{good:?}");
        }
        for bad in [
            "h:8x", "h:80:81", "h:123456", "h:65536", "a b", "a/b", "a@b", "a\"b", "[::1",
            "[::1]x", "[zz]", "%4", "%zz", "a\\b",
        ] {
            assert!(check_host(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_HOST + 1);
        assert_eq!(
            check_host(long.as_bytes()),
            Err(HeadError::Malformed("host too long"))
        );
        // Over the whole head, too: never re-routed as if it had no host.
        malformed(&format!("GET / HTTP/1.1\r\nHost: {long}\r\n\r\n"));
    }

    #[test]
    fn target_bytes_outside_rfc3986_are_refused() {
        for bad in [
            "/a#frag", "/a<b", "/a>b", "/a\"b", "/a{b", "/a}b", "/a|b", "/a\\b", "/a^b", "/a`b",
            "/a%", "/a%2", "/a%zz", "/%C3%", "/\u{e9}",
        ] {
            let raw = format!("GET {bad} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert!(
                matches!(parse(&raw), Err(HeadError::Malformed(_))),
                "{bad:?}: {:?}",
                parse(&raw)
            );
        }
        for good in [
            "/",
            "/a/b?c=d&e=f",
            "/%C3%A9",
            "/a:b@c!$&'()*+,;=-._~",
            "/?a/b?c",
        ] {
            let raw = format!("GET {good} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(parse(&raw).unwrap().unwrap().0, good);
        }
    }

    #[test]
    fn h2c_is_never_an_upgrade() {
        let upgrade = |up: &str| {
            let raw = format!(
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {up}\r\n\r\n"
            );
            let mut h = [httparse::EMPTY_HEADER; 16];
            parse_request(raw.as_bytes(), &mut h, LIMITS)
                .unwrap()
                .unwrap()
                .upgrade
        };
        assert!(!upgrade("h2c"));
        assert!(!upgrade("H2C"));
        assert!(upgrade("websocket"));
        assert!(upgrade("h2c, websocket"));
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(100));
        assert_eq!(parse(&long), Err(HeadError::UriTooLong));
        assert_eq!(
            parse(&long[..105]),
            Err(HeadError::UriTooLong),
            "before the line ends"
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "a".repeat(400)
        );
        assert_eq!(parse(&big), Err(HeadError::HeadersTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..20 {
            many.push_str(&format!("X{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(&many), Err(HeadError::HeadersTooLarge));
    }

    #[test]
    fn response_framing() {
        let f = |raw: &str, head: bool| {
            let mut h = [httparse::EMPTY_HEADER; 16];
            parse_response(raw.as_bytes(), &mut h, head, 1000)
                .map(|r| r.map(|r| (r.framing, r.keep_alive)))
        };
        let ok = |raw, head| f(raw, head).unwrap().unwrap();
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            (Framing::Length(5), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            (Framing::None, true)
        );
        assert_eq!(
            ok("HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\n", false),
            (Framing::None, true)
        );
        assert_eq!(ok("HTTP/1.1 304 No\r\n\r\n", false), (Framing::None, true));
        assert_eq!(
            ok("HTTP/1.1 100 Continue\r\n\r\n", false),
            (Framing::None, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::Close, false)
        );
        assert_eq!(
            ok(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            (Framing::Chunked, true)
        );
        assert_eq!(
            ok(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            (Framing::Length(1), false)
        );
        assert!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
        assert!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false)
                .unwrap()
                .is_none()
        );
        // Found by fuzzing: three digits that are not a status.
        assert!(f("HTTP/1.0 063 x\r\n\r\n", false).is_err());
        assert!(f("HTTP/1.1 600 x\r\n\r\n", false).is_err());
    }
}
