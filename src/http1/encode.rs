//! Writing heads: the request as sent upstream, the response as sent to
//! the client. Hop-by-hop headers are dropped (RFC 9110 §7.6.1), the
//! forwarding headers are appended. Everything is written into a reused
//! buffer, so once warm this allocates nothing.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::IpAddr;

use httparse::Header;

use super::parse::{MAX_CONNECTION_LINES, Request, Response, is_h2c, tokens};

pub const VIA: &[u8] = b"1.1 ringway";

/// The reason phrase of a status ringway answers with itself: RFC 9110's
/// names (the `http` crate still has the older ones for 413 and 422).
pub fn reason(status: u16) -> &'static str {
    match status {
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        _ => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    }
}

/// How the request head is rewritten for the upstream.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    pub client_ip: IpAddr,
    /// The request target to send is `target_lead` then `target`; it differs
    /// from the client's when a prefix is stripped ("/" + "?q" for "/api?q").
    pub target_lead: &'a str,
    pub target: &'a str,
    /// Replaces the Host header when the route says so.
    pub set_host: Option<&'a str>,
    /// Host to send when the client sent none (HTTP/1.0).
    pub fallback_host: &'a str,
    /// Pass header fields whose names hold `_`; dropped otherwise.
    pub underscores: bool,
    /// The client came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// On a listener that passes client certificates on: the header, and
    /// the verified certificate's subject if the client sent one. The
    /// client's own lines of that header are dropped either way.
    pub client_cert: Option<(&'a str, Option<&'a str>)>,
}

/// The Connection header's values, kept to drop the headers they name.
/// The parsers refuse a message with more lines than this holds.
struct Named<'b> {
    values: [&'b [u8]; MAX_CONNECTION_LINES],
    len: usize,
}

impl<'b> Named<'b> {
    fn of(headers: &[Header<'b>]) -> Named<'b> {
        let mut n = Named {
            values: [&[]; MAX_CONNECTION_LINES],
            len: 0,
        };
        for h in headers {
            if n.len < n.values.len() && h.name.eq_ignore_ascii_case("connection") {
                n.values[n.len] = h.value;
                n.len += 1;
            }
        }
        n
    }

    /// Whether the Connection header makes `name` hop-by-hop. Never the
    /// fields framing and routing rest on: dropping Content-Length or
    /// Transfer-Encoding while the body goes on would smuggle the body in
    /// as the next request.
    fn drops(&self, name: &str) -> bool {
        let essential = ["content-length", "transfer-encoding", "host"];
        !essential.iter().any(|e| name.eq_ignore_ascii_case(e))
            && self.values[..self.len]
                .iter()
                .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    }
}

/// How many lines a list header has.
fn lines(headers: &[Header<'_>], name: &str) -> usize {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count()
}

/// The hop-by-hop fields (RFC 9110 §7.6.1, and the ones proxies met in
/// practice): never passed on, lower-case.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a request field named with `_` may go upstream. A backend that
/// folds `_` into `-` (CGI, many frameworks) would read `Content_Length` as a
/// second framing header, so those never go, whatever the route says.
fn underscore_passes(name: &str, allowed: bool) -> bool {
    if !name.contains('_') {
        return true;
    }
    let folds_to = |framing: &str| {
        name.len() == framing.len()
            && name
                .bytes()
                .zip(framing.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
    };
    allowed && !folds_to("content-length") && !folds_to("transfer-encoding")
}

/// The Upgrade list without `h2c`, which is never tunnelled.
fn upgrade_header(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(b"Upgrade: ");
    let mut first = true;
    for t in tokens(value).filter(|t| !is_h2c(t)) {
        if !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(t);
        first = false;
    }
    out.extend_from_slice(b"\r\n");
}

/// `Via` is a list, over one line or several: ours goes after what the
/// message already carries, at the end of the last Via line forwarded
/// (`last_via`: where that line's value ends in `out`), or on a line of its
/// own.
fn add_via(out: &mut Vec<u8>, last_via: Option<usize>) {
    match last_via {
        Some(end) => {
            let ours = b", ".iter().chain(VIA).copied();
            out.splice(end..end, ours);
        }
        None => header(out, b"Via", VIA),
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is one of `remove` (lower-case names); one that ends in
/// `*` stands for every name it starts (`access-control-*`).
fn removed(remove: &[Box<str>], name: &str) -> bool {
    remove.iter().any(|r| match r.strip_suffix('*') {
        Some(prefix) => name
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|n| same_name(n, prefix.as_bytes())),
        None => same_name(r.as_bytes(), name.as_bytes()),
    })
}

/// Field names alike, ASCII case ignored and `_` taken for `-`: many
/// applications read `X_Client_Ip` as `X-Client-Ip`, so on a route that
/// passes `_` (`underscores_in_headers`) a rule that removes or sets one
/// must hold the other back too, or a client could forge it.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// The `Connection` line of a response ringway writes itself: `close`, or
/// `keep-alive` for an HTTP/1.0 client that keeps the connection.
pub fn connection_line(close: bool, minor_version: u8) -> &'static [u8] {
    match (close, minor_version) {
        (true, _) => b"Connection: close\r\n",
        (false, 0) => b"Connection: keep-alive\r\n",
        _ => b"",
    }
}

pub fn request_head(out: &mut Vec<u8>, req: &Request<'_, '_>, fwd: &Forward<'_>) {
    request_fields(out, req, fwd, &[]);
    out.extend_from_slice(b"\r\n");
}

/// The request head without its final empty line, so a route's policy
/// can add fields; `remove` names fields (lower-case) not forwarded.
pub fn request_fields(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    fwd: &Forward<'_>,
    remove: &[Box<str>],
) {
    let named = Named::of(req.headers);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(fwd.target_lead.as_bytes());
    out.extend_from_slice(fwd.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // One X-Forwarded-For line gets our address appended; several are one
    // list split over lines, kept as they are, with ours on a final line.
    let xff_lines = lines(req.headers, "x-forwarded-for");
    let mut xff: Option<&[u8]> = None;
    let mut last_via = None;
    let mut host_seen = false;
    for h in req.headers {
        let name = h.name;
        if hop_by_hop(name) {
            if req.upgrade && name.eq_ignore_ascii_case("upgrade") {
                upgrade_header(out, h.value);
            }
            continue;
        }
        if named.drops(name)
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || fwd
                .client_cert
                .is_some_and(|(h, _)| same_name(h.as_bytes(), name.as_bytes()))
            || !underscore_passes(name, fwd.underscores)
            || removed(remove, name)
        {
            continue;
        }
        if xff_lines == 1 && name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = Some(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            host_seen = true;
            match (fwd.set_host, req.absolute) {
                (Some(set), _) => header(out, b"Host", set.as_bytes()),
                (None, true) => header(out, b"Host", req.host.as_bytes()),
                (None, false) => header(out, name.as_bytes(), h.value),
            }
            continue;
        }
        header(out, name.as_bytes(), h.value);
        if name.eq_ignore_ascii_case("via") {
            last_via = Some(out.len() - 2);
        }
    }
    if !host_seen {
        let host = match (fwd.set_host, req.absolute) {
            (Some(set), _) => set,
            (None, true) => req.host,
            (None, false) => fwd.fallback_host,
        };
        header(out, b"Host", host.as_bytes());
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(v) = xff {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}\r\n", fwd.client_ip);
    out.extend_from_slice(match fwd.https {
        true => b"X-Forwarded-Proto: https\r\n",
        false => b"X-Forwarded-Proto: http\r\n",
    });
    if let Some((h, Some(subject))) = fwd.client_cert {
        header(out, h.as_bytes(), subject.as_bytes());
    }
    add_via(out, last_via);
    if req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
}

/// How the response head is adjusted for the client.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The client connection closes after this response.
    pub close: bool,
    /// The client speaks HTTP/1.0 and asked for keep-alive.
    pub keep_alive_1_0: bool,
    /// Drop Transfer-Encoding: the body is de-chunked for an HTTP/1.0 client.
    pub dechunk: bool,
    /// The shard's current `Date` value, added when the upstream sent none
    /// (RFC 9110 §6.6.1).
    pub date: &'a [u8],
}

pub fn response_head(out: &mut Vec<u8>, resp: &Response<'_, '_>, reply: Reply<'_>) {
    response_fields(out, resp, reply, &[]);
    out.extend_from_slice(b"\r\n");
}

/// The response head without its final empty line, so a route's policy
/// can add fields; `remove` names fields (lower-case) not passed on.
pub fn response_fields(
    out: &mut Vec<u8>,
    resp: &Response<'_, '_>,
    reply: Reply<'_>,
    remove: &[Box<str>],
) {
    let named = Named::of(resp.headers);
    let switching = resp.status == 101;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    let mut last_via = None;
    let mut date_seen = false;
    for h in resp.headers {
        let name = h.name;
        if hop_by_hop(name) {
            if switching && name.eq_ignore_ascii_case("upgrade") {
                header(out, b"Upgrade", h.value);
            }
            continue;
        }
        if named.drops(name)
            || (reply.dechunk && name.eq_ignore_ascii_case("transfer-encoding"))
            || removed(remove, name)
        {
            continue;
        }
        date_seen |= name.eq_ignore_ascii_case("date");
        header(out, name.as_bytes(), h.value);
        if name.eq_ignore_ascii_case("via") {
            last_via = Some(out.len() - 2);
        }
    }
    add_via(out, last_via);
    // Interim responses need none; every final one has a Date.
    if !date_seen && resp.status >= 200 {
        header(out, b"Date", reply.date);
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if reply.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if reply.keep_alive_1_0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::parse::{HeadLimits, parse_request, parse_response};

    fn rewrite(raw: &str, set_host: Option<&str>) -> String {
        rewrite_with(raw, set_host, false)
    }

    fn rewrite_with(raw: &str, set_host: Option<&str>, underscores: bool) -> String {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let limits = HeadLimits {
            max_request_line: 1000,
            max_header_bytes: 4000,
        };
        let req = parse_request(raw.as_bytes(), &mut h, limits)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let fwd = Forward {
            client_ip: "10.0.0.9".parse().unwrap(),
            target_lead: "",
            target: req.target,
            set_host,
            fallback_host: "up:80",
            underscores,
            https: false,
            client_cert: None,
        };
        request_head(&mut out, &req, &fwd);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_dropped_and_forwarding_added() {
        let out = rewrite(
            "GET /p?q HTTP/1.1\r\nHost: ex\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n\
             X-Secret: s\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Forwarded-For: 1.2.3.4\r\n\
             X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n",
            None,
        );
        assert_eq!(
            out,
            "GET /p?q HTTP/1.1\r\nHost: ex\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n\
             X-Forwarded-Proto: http\r\nVia: 1.1 ringway\r\n\r\n"
        );
    }

    #[test]
    fn set_host_and_fallback_host() {
        let out = rewrite("GET / HTTP/1.1\r\nHost: ex\r\n\r\n", Some("inner"));
        assert!(
            out.contains("Host: inner\r\n") && !out.contains("ex"),
            "{out}"
        );
        let out = rewrite("GET / HTTP/1.0\r\n\r\n", None);
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nHost: up:80\r\n"),
            "{out}"
        );
    }

    #[test]
    fn upgrade_kept_when_upgrading() {
        let out = rewrite(
            "GET /ws HTTP/1.1\r\nHost: ex\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            None,
        );
        assert!(
            out.contains("Upgrade: websocket\r\n") && out.contains("Connection: upgrade\r\n"),
            "{out}"
        );
    }

    /// The response head `raw` as rewritten for the client.
    fn reply(raw: &str, close: bool, dechunk: bool) -> String {
        let mut h = [httparse::EMPTY_HEADER; 8];
        let resp = parse_response(raw.as_bytes(), &mut h, false, 1000)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let reply = Reply {
            close,
            keep_alive_1_0: false,
            dechunk,
            date: b"Mon, 23 Nov 2026 12:00:00 GMT",
        };
        response_head(&mut out, &resp, reply);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_rule_holds_a_name_written_with_underscores_too() {
        let remove: [Box<str>; 2] = ["x-client-ip".into(), "x-debug-*".into()];
        assert!(removed(&remove, "X_Client_Ip"));
        assert!(removed(&remove, "x-client-ip"));
        assert!(removed(&remove, "X_DEBUG_trace"));
        assert!(!removed(&remove, "X-Client-Ipv6"));
        assert!(!removed(&remove, "X-Clientip"));
    }

    #[test]
    fn named_fields_and_prefixes_are_removed() {
        let mut h = [httparse::EMPTY_HEADER; 8];
        let raw = "HTTP/1.1 200 OK\r\nServer: x\r\nAccess-Control-Allow-Origin: *\r\n\
                   access-control-max-age: 5\r\nX-Keep: 1\r\n\r\n";
        let resp = parse_response(raw.as_bytes(), &mut h, false, 1000)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let reply = Reply {
            close: false,
            keep_alive_1_0: false,
            dechunk: false,
            date: b"Mon, 23 Nov 2026 12:00:00 GMT",
        };
        let remove: [Box<str>; 2] = ["server".into(), "access-control-*".into()];
        response_fields(&mut out, &resp, reply, &remove);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("X-Keep: 1\r\n"), "{out}");
        assert!(!out.contains("Server") && !out.to_ascii_lowercase().contains("access-control"));
        assert!(
            !out.ends_with("\r\n\r\n"),
            "the caller ends the head: {out}"
        );
    }

    #[test]
    fn response_rewrite() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nVia: 1.0 a\r\n\r\n";
        assert_eq!(
            reply(raw, true, true),
            "HTTP/1.1 200 OK\r\nVia: 1.0 a, 1.1 ringway\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn upstream_date_is_kept() {
        let out = reply(
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!(out.matches("Date: ").count(), 1, "{out}");
        assert!(out.contains("1994"), "{out}");
    }

    #[test]
    fn absolute_form_sends_its_authority_as_host() {
        let out = rewrite(
            "GET http://a.example:81/p HTTP/1.1\r\nHost: other\r\n\r\n",
            None,
        );
        assert!(
            out.starts_with("GET /p HTTP/1.1\r\nHost: a.example:81\r\n"),
            "{out}"
        );
        let out = rewrite("GET http://a.example/p HTTP/1.0\r\n\r\n", None);
        assert!(out.contains("Host: a.example\r\n"), "{out}");
    }

    #[test]
    fn underscored_fields_are_dropped_unless_the_route_passes_them() {
        let raw = "GET / HTTP/1.1\r\nHost: ex\r\nX_User: a\r\nContent_Length: 5\r\n\
                   transfer_encoding: chunked\r\nX-Ok: 1\r\n\r\n";
        let out = rewrite_with(raw, None, false);
        assert!(!out.contains('_') && out.contains("X-Ok: 1\r\n"), "{out}");
        let out = rewrite_with(raw, None, true);
        assert!(out.contains("X_User: a\r\n"), "{out}");
        assert!(
            !out.contains("Content_Length") && !out.contains("transfer_encoding"),
            "never a field that folds to a framing header: {out}"
        );
    }

    #[test]
    fn connection_cannot_make_framing_or_host_hop_by_hop() {
        // Found by fuzzing (request_rewrite): dropping Content-Length while
        // the body goes on would smuggle the body in as a request.
        let out = rewrite(
            "POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length, host, x-a\r\n\
             Content-Length: 3\r\nX-A: 1\r\n\r\n",
            None,
        );
        assert!(out.contains("Content-Length: 3\r\n"), "{out}");
        assert!(out.contains("Host: h\r\n") && !out.contains("X-A"), "{out}");
        let out = rewrite(
            "POST / HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            None,
        );
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    }

    #[test]
    fn via_goes_on_the_last_via_line_forwarded() {
        // Found by fuzzing: a Via line the Connection header drops is not
        // the one ours goes on.
        let out = rewrite(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: via\r\nVia: 1.0 a\r\n\r\n",
            None,
        );
        assert!(
            out.contains("Via: 1.1 ringway\r\n") && !out.contains("1.0 a"),
            "{out}"
        );
    }

    #[test]
    fn via_goes_on_the_last_via_line_only() {
        let out = rewrite(
            "GET / HTTP/1.1\r\nHost: h\r\nVia: 1.0 a\r\nVia: 1.0 b\r\n\r\n",
            None,
        );
        assert!(
            out.contains("Via: 1.0 a\r\nVia: 1.0 b, 1.1 ringway\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("ringway").count(), 1);
    }

    #[test]
    fn h2c_is_dropped_from_upgrade() {
        let out = rewrite(
            "GET / HTTP/1.1\r\nHost: ex\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            None,
        );
        assert!(
            !out.to_ascii_lowercase().contains("upgrade") && !out.contains("HTTP2-Settings"),
            "plain HTTP/1.1: {out}"
        );
        let out = rewrite(
            "GET / HTTP/1.1\r\nHost: ex\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n",
            None,
        );
        assert!(
            out.contains("Upgrade: websocket\r\n") && out.contains("Connection: upgrade\r\n"),
            "{out}"
        );
    }
}
