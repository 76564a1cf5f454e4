//! A request head the parser accepts, rewritten for the upstream by
//! `encode::request_head`, parses again and says the same thing: method,
//! target, host, body framing and upgrade are kept; no hop-by-hop header is
//! left but the Upgrade/Connection pair of an upgrade; every other header
//! goes through unchanged, in order; the forwarding headers are there once,
//! with the client's address last.
//!
//! The first byte picks the rewrite: bit 0 sets the route's Host, bit 1
//! makes the client address IPv6, bit 2 lets names with `_` pass.
//!
//! Found by this target and fixed (inputs under
//! fuzz/regressions/request_rewrite/): a Connection header naming Host,
//! Content-Length or Transfer-Encoding dropped that header (request
//! smuggling); names on a fifth Connection line were forwarded (now more
//! than four lines are refused); every Via line got ringway appended.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use ringway::http1::encode::{Forward, request_head};
use ringway::http1::parse::{EMPTY_HEADER, HeadLimits, Request, parse_request, tokens};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 1024,
    max_header_bytes: 4096,
};
/// The rewrite adds at most five lines and `, 1.1 ringway` to each Via line.
const OUT_LIMITS: HeadLimits = HeadLimits {
    max_request_line: 2048,
    max_header_bytes: 16 * 1024,
};
const SET_HOST: &str = "inner.test:8080";
const FALLBACK_HOST: &str = "10.9.8.7:80";

fn header<'b>(req: &Request<'_, 'b>, name: &str) -> Option<&'b [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn values<'a, 'b>(req: &'a Request<'_, 'b>, name: &'a str) -> impl Iterator<Item = &'b [u8]> + 'a {
    req.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a field named `name` goes upstream as far as `_` goes: never
/// when it reads as a framing header with `_` for `-`, else as the route says.
fn underscore_passes(name: &str, allowed: bool) -> bool {
    let folded = name.replace('_', "-");
    !name.contains('_')
        || (allowed
            && !folded.eq_ignore_ascii_case("content-length")
            && !folded.eq_ignore_ascii_case("transfer-encoding"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, data)) = data.split_first() else {
        return;
    };
    let mut headers = [EMPTY_HEADER; 64];
    let Ok(Some(req)) = parse_request(data, &mut headers, LIMITS) else {
        return;
    };
    let set_host = (opts & 1 == 1).then_some(SET_HOST);
    let underscores = opts & 4 == 4;
    let client_ip = if opts & 2 == 2 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    };
    // As conn.rs sends "http://h?q": "/" then "?q".
    let target_lead = if req.target.starts_with('?') { "/" } else { "" };
    let fwd = Forward {
        client_ip,
        target_lead,
        target: req.target,
        set_host,
        fallback_host: FALLBACK_HOST,
        underscores,
        https: false,
        client_cert: None,
    };
    let mut out = Vec::new();
    request_head(&mut out, &req, &fwd);

    let mut again = [EMPTY_HEADER; 80];
    let up = match parse_request(&out, &mut again, OUT_LIMITS) {
        Ok(Some(up)) => up,
        other => panic!(
            "rewritten head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    let shown = String::from_utf8_lossy(&out);
    assert_eq!(up.head_len, out.len(), "{shown}");
    assert_eq!(up.method, req.method, "{shown}");
    assert_eq!(up.target, format!("{target_lead}{}", req.target), "{shown}");
    assert_eq!(up.minor_version, 1, "{shown}");

    // The host the request was routed on is the host the upstream sees
    // (RFC 9112 §3.2.2: a proxy replaces Host by the absolute-form authority).
    let routed = if req.host.is_empty() && header(&req, "host").is_none() {
        FALLBACK_HOST
    } else {
        req.host
    };
    assert_eq!(up.host, set_host.unwrap_or(routed), "{shown}");

    // The upstream frames the body as the proxy does, or the two disagree on
    // where the next request starts (request smuggling).
    assert_eq!(up.framing, req.framing, "{shown}");
    assert_eq!(up.upgrade, req.upgrade, "{shown}");

    for h in up.headers {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "keep-alive" | "proxy-connection" | "te" | "trailer" | "http2-settings" => {
                panic!("hop-by-hop {name} forwarded\n{shown}")
            }
            "connection" => assert!(req.upgrade && h.value == b"upgrade", "{shown}"),
            "upgrade" => assert!(req.upgrade, "{shown}"),
            _ => {}
        }
    }
    // Every other header goes through as it came, in order.
    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
    ];
    const OURS: [&str; 4] = ["host", "via", "x-forwarded-for", "x-forwarded-proto"];
    let is = |set: &[&str], name: &str| set.iter().any(|n| name.eq_ignore_ascii_case(n));
    // A Connection option never drops the fields framing rests on.
    let named = |name: &str| {
        !is(&["content-length", "transfer-encoding"], name)
            && values(&req, "connection")
                .flat_map(tokens)
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    };
    let sent: Vec<_> = req
        .headers
        .iter()
        .filter(|h| !is(&HOP, h.name) && !is(&OURS, h.name) && !named(h.name))
        .filter(|h| underscore_passes(h.name, underscores))
        .map(|h| (h.name, h.value))
        .collect();
    let got: Vec<_> = up
        .headers
        .iter()
        .filter(|h| !is(&HOP, h.name) && !is(&OURS, h.name))
        .map(|h| (h.name, h.value))
        .collect();
    assert_eq!(got, sent, "{shown}");

    let proto: Vec<_> = values(&up, "x-forwarded-proto").collect();
    assert_eq!(proto, [b"http"], "{shown}");
    let xff = values(&up, "x-forwarded-for").last().unwrap_or_default();
    let ip = client_ip.to_string();
    assert!(
        xff == ip.as_bytes() || xff.ends_with(format!(", {ip}").as_bytes()),
        "{shown}"
    );
    // Via is one list over all its lines: ringway added once, last.
    let via: Vec<&[u8]> = values(&up, "via").collect();
    let via = via.join(&b", "[..]);
    assert!(via.ends_with(b"1.1 ringway"), "{shown}");
    let ours = |v: &[u8]| v.windows(11).filter(|w| w == b"1.1 ringway").count();
    let before: usize = values(&req, "via").map(ours).sum();
    assert_eq!(ours(&via), before + 1, "{shown}");
});
