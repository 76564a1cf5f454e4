//! A route's gateway policy (request ID, CORS, header rules, prefix
//! rewrite) applied to a hostile request head, and to a hostile response
//! head for it, exactly as `Conn::plan` (Action::Proxy) and
//! `proxy::response` apply it. The policies are compiled from a fixed
//! config text through `Config::parse` and `Snapshot::compile`.
//!
//! Request side: the head sent upstream parses again with the same method,
//! framing and Host, and the target the rewrite says (origin-form); fields
//! the rules remove (`X-Debug-*` included), set, or carry the request ID
//! are gone from the client's; every other field goes through in order;
//! the policy's lines come last, the set ones once each with their value.
//! A preflight is answered instead: a 204 with CORS fields only for the
//! allowed origin.
//!
//! Response side (the bytes after the request head): the head sent to the
//! client parses again with the same status and framing (none after
//! de-chunking for HTTP/1.0), the upstream's removed, set, request-ID and
//! `Access-Control-*` fields are gone, the rest in order, then the policy's
//! lines: CORS fields only when the request's Origin is the allowed one.
//!
//! No CR or LF but in line ends, anywhere.
//!
//! Found by this target and fixed (input under
//! fuzz/regressions/policy_rewrite/): on a route with `rewrite_prefix`, an
//! absolute-form target with a query and no path (`GET http://h?q`) went
//! upstream as `GET ?q HTTP/1.1`, no request target at all.
//!
//! The first byte picks the variant: bits 0-1 the route (see `CONFIG`:
//! request ID trusted or not, rewrite, set_host, underscores), bit 2 makes
//! the client address IPv6.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ringway::Snapshot;
use ringway::config::{Action, Config};
use ringway::http1::body::Framing;
use ringway::http1::encode::{Forward, Reply, request_fields, response_fields, response_head};
use ringway::http1::parse::{
    EMPTY_HEADER, HeadLimits, Header, parse_request, parse_response, tokens,
};
use ringway::policy::{RoutePolicy, Tags, Vars};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 1024,
    max_header_bytes: 4096,
};
/// The rewrite adds a handful of lines, `${host}` (255 bytes at most) and
/// the rewrite's `to`.
const OUT_LIMITS: HeadLimits = HeadLimits {
    max_request_line: 2048,
    max_header_bytes: 64 * 1024,
};
const FALLBACK_HOST: &str = "10.9.8.7:80";
const DATE: &[u8] = b"Mon, 23 Nov 2026 18:00:00 GMT";
const ALLOWED_ORIGIN: &str = "https://app.example.com";

/// What each route is, besides what they share (`SHARED`).
struct RouteSpec {
    name: &'static str,
    /// The request ID's header and whether the client's is trusted.
    rid: (&'static str, bool),
    /// `rewrite_prefix`.
    from: &'static str,
    to: &'static str,
    set_host: Option<&'static str>,
    underscores: bool,
}

const ROUTES: [RouteSpec; 4] = [
    RouteSpec {
        name: "api",
        rid: ("X-Request-Id", false),
        from: "/api",
        to: "/v2",
        set_host: None,
        underscores: false,
    },
    RouteSpec {
        name: "trusted",
        rid: ("Trace-Id", true),
        from: "/api/",
        to: "/",
        set_host: Some("inner.test:8080"),
        underscores: true,
    },
    RouteSpec {
        name: "edge",
        rid: ("X-Correlation-ID", true),
        from: "/a",
        to: "/b/c/",
        set_host: None,
        underscores: true,
    },
    RouteSpec {
        name: "plain",
        rid: ("X-Request-Id", false),
        from: "/v1/users",
        to: "/users",
        set_host: Some("u.internal"),
        underscores: false,
    },
];

/// The policy every route has, but for its request ID and rewrite.
const SHARED: &str = r#"
cors = { origins = ["https://app.example.com"], credentials = true, expose = ["X-Total-Count"], max_age = 60 }
request_headers = { set = { X-Client-Ip = "${client_ip}", X-Gateway-Route = "${route}", X-Orig-Host = "h=${host}" }, add = { X-Trace-Tag = "id=${request_id}" }, remove = ["X-Debug-*", "Cookie", "x-api-key"] }
response_headers = { set = { X-Frame-Options = "DENY" }, add = { X-Served-By = "ringway ${route} ${request_id}" }, remove = ["Server", "X-Internal-*"] }
"#;

/// Request rules: removed (lower-case; `*` ends a prefix), set, added.
const REQ_REMOVE: [&str; 3] = ["x-debug-*", "cookie", "x-api-key"];
const REQ_SET: [&str; 3] = ["x-client-ip", "x-gateway-route", "x-orig-host"];
const RESP_REMOVE: [&str; 2] = ["server", "x-internal-*"];
const RESP_SET: [&str; 1] = ["x-frame-options"];

struct Compiled {
    snap: Snapshot,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let mut text = String::from(
        "[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"o\"\nendpoints = [\"127.0.0.1:9\"]\n",
    );
    for (i, r) in ROUTES.iter().enumerate() {
        text.push_str(&format!(
            "\n[[route]]\nname = \"{}\"\nhost = \"r{i}.test\"\nprefix = \"/\"\nupstream = \"o\"\n\
             request_id = {{ header = \"{}\", trust_incoming = {} }}\n\
             rewrite_prefix = {{ from = \"{}\", to = \"{}\" }}\n\
             underscores_in_headers = {}\n",
            r.name, r.rid.0, r.rid.1, r.from, r.to, r.underscores
        ));
        if let Some(h) = r.set_host {
            text.push_str(&format!("set_host = \"{h}\"\n"));
        }
        text.push_str(SHARED);
    }
    let config = Config::parse(Path::new("policy_rewrite.toml"), &text)
        .unwrap_or_else(|e| panic!("the fixed config is refused: {e}\n{text}"));
    let snap = Snapshot::compile(config);
    for (route, spec) in snap.config.routes.iter().zip(&ROUTES) {
        assert_eq!(route.name, spec.name);
        assert!(matches!(route.action, Action::Proxy(_)));
        assert_eq!(route.set_host.as_deref(), spec.set_host);
        assert_eq!(route.underscores_in_headers, spec.underscores);
        assert!(route.policy.touches_response());
    }
    Compiled { snap }
});

fn values<'a, 'b>(hs: &'a [Header<'b>], name: &'a str) -> impl Iterator<Item = &'b [u8]> + 'a {
    hs.iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn is(set: &[&str], name: &str) -> bool {
    set.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Field names alike as a rule sees them: case ignored, `_` taken for `-`.
fn alike(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Whether a rule on `rules` (lower-case, `*` ending a prefix) holds
/// `name` back: what the proxy drops of a route's removed and set fields
/// (and its request ID's).
fn matches_rule(rules: &[&str], name: &str) -> bool {
    rules.iter().any(|r| match r.strip_suffix('*') {
        Some(p) => name
            .as_bytes()
            .get(..p.len())
            .is_some_and(|n| alike(n, p.as_bytes())),
        None => alike(name.as_bytes(), r.as_bytes()),
    })
}

/// A field name passes as far as `_` goes (see request_rewrite).
fn underscore_passes(name: &str, allowed: bool) -> bool {
    let folded = name.replace('_', "-");
    !name.contains('_')
        || (allowed
            && !folded.eq_ignore_ascii_case("content-length")
            && !folded.eq_ignore_ascii_case("transfer-encoding"))
}

/// Whether the message's Connection header makes `name` hop-by-hop (never
/// the framing fields, nor Host).
fn named(hs: &[Header<'_>], name: &str) -> bool {
    !is(&["content-length", "transfer-encoding", "host"], name)
        && values(hs, "connection")
            .flat_map(tokens)
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// CR and LF only as line ends, and the head is all the bytes.
fn check_line_ends(out: &[u8], shown: &str) {
    for (i, &b) in out.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}\n{shown}"),
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}\n{shown}"),
            0 => panic!("NUL at {i}\n{shown}"),
            _ => {}
        }
    }
}

fn no_crlf(hs: &[Header<'_>], shown: &str) {
    for h in hs {
        assert!(
            !h.value.iter().any(|&b| b == b'\r' || b == b'\n'),
            "CR/LF in {}\n{shown}",
            h.name
        );
    }
}

/// The target the upstream should get: origin-form (the parser leaves "?q"
/// of "http://h?q", which is "/?q"), `from` replaced by `to` on a segment
/// boundary.
fn expected_target(target: &str, from: &str, to: &str) -> String {
    if target == "*" {
        return target.into();
    }
    let t = if target.starts_with('?') {
        format!("/{target}")
    } else {
        target.to_string()
    };
    let from = from.trim_end_matches('/');
    match t.strip_prefix(from) {
        Some(rest) if rest.is_empty() || rest.starts_with('?') => format!("{to}{rest}"),
        Some(rest) if rest.starts_with('/') => {
            format!("{}{rest}", to.strip_suffix('/').unwrap_or(to))
        }
        _ => t,
    }
}

fn is_uuid_v4(s: &[u8]) -> bool {
    let groups: Vec<usize> = s.split(|&b| b == b'-').map(<[u8]>::len).collect();
    groups == [8, 4, 4, 4, 12]
        && s.iter().all(|&b| b == b'-' || b.is_ascii_hexdigit())
        && s[14] == b'4'
        && b"89ab".contains(&s[19])
}

fn lossy(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, data)) = data.split_first() else {
        return;
    };
    let mut headers = [EMPTY_HEADER; 64];
    let Ok(Some(req)) = parse_request(data, &mut headers, LIMITS) else {
        return;
    };
    let compiled = &*COMPILED;
    let which = usize::from(opts & 3);
    let spec = &ROUTES[which];
    let route = &compiled.snap.config.routes[which];
    let policy: &RoutePolicy = &route.policy;
    let client_ip = if opts & 4 == 4 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    };

    // ---- as Conn::plan does ----
    let mut tags = Tags::new(client_ip);
    policy.tag(req.headers, &mut tags);

    // The request ID: the client's first valid one from a trusted client,
    // else a fresh UUID.
    let id = tags
        .request_id()
        .expect("a route with request_id gives an id");
    let incoming = values(req.headers, spec.rid.0)
        .find(|v| (1..=64).contains(&v.len()) && v.iter().all(u8::is_ascii_graphic));
    match (spec.rid.1, incoming) {
        (true, Some(v)) => assert_eq!(id, v),
        _ => assert!(is_uuid_v4(id), "{}", lossy(id)),
    }
    let id = id.to_vec();
    // The last Origin line is the one that counts.
    let allowed = values(req.headers, "origin")
        .last()
        .is_some_and(|o| o.eq_ignore_ascii_case(ALLOWED_ORIGIN.as_bytes()));

    let mut out = Vec::new();
    if policy.is_preflight(req.method, req.headers) {
        policy.write_preflight(&mut out, &tags, DATE, b"");
        let shown = lossy(&out);
        check_line_ends(&out, &shown);
        let mut again = [EMPTY_HEADER; 32];
        let resp = match parse_response(&out, &mut again, false, 64 * 1024) {
            Ok(Some(r)) => r,
            other => panic!("preflight answer does not parse: {other:?}\n{shown}"),
        };
        assert_eq!(resp.status, 204, "{shown}");
        assert_eq!(resp.head_len, out.len(), "{shown}");
        let acao: Vec<_> = values(resp.headers, "access-control-allow-origin").collect();
        match allowed {
            true => assert_eq!(acao, [ALLOWED_ORIGIN.as_bytes()], "{shown}"),
            false => assert!(
                !resp
                    .headers
                    .iter()
                    .any(|h| matches_rule(&["access-control-*"], h.name)),
                "{shown}"
            ),
        }
        let ids: Vec<_> = values(resp.headers, spec.rid.0).collect();
        assert_eq!(ids, [&id[..]], "{shown}");
        return;
    }

    let (lead, target) = policy
        .rewrite(req.target)
        .expect("every route here has rewrite_prefix");
    let fwd = Forward {
        client_ip,
        target_lead: lead,
        target,
        set_host: route.set_host.as_deref(),
        fallback_host: FALLBACK_HOST,
        underscores: route.underscores_in_headers,
        https: false,
        client_cert: None,
    };
    request_fields(&mut out, &req, &fwd, policy.request_drops());
    let vars = Vars {
        client_ip,
        request_id: tags.request_id().unwrap_or_default(),
        host: req.host,
        path: req.path,
        query: "",
    };
    policy.request_lines(&mut out, &tags, &vars);
    out.extend_from_slice(b"\r\n");

    // ---- the request as the upstream reads it ----
    let shown = lossy(&out);
    check_line_ends(&out, &shown);
    let mut again = [EMPTY_HEADER; 128];
    let up = match parse_request(&out, &mut again, OUT_LIMITS) {
        Ok(Some(up)) => up,
        other => panic!("rewritten head does not parse: {other:?}\n{shown}"),
    };
    no_crlf(up.headers, &shown);
    assert_eq!(up.head_len, out.len(), "{shown}");
    assert_eq!(up.method, req.method, "{shown}");
    assert_eq!(
        up.target,
        expected_target(req.target, spec.from, spec.to),
        "{shown}"
    );
    assert_eq!(up.framing, req.framing, "{shown}");
    assert_eq!(up.upgrade, req.upgrade, "{shown}");
    let routed = if req.host.is_empty() && values(req.headers, "host").next().is_none() {
        FALLBACK_HOST
    } else {
        req.host
    };
    assert_eq!(up.host, spec.set_host.unwrap_or(routed), "{shown}");

    // The policy's lines come last: the ID, then `set`, then `add`.
    let ip = client_ip.to_string();
    let mut host_value = b"h=".to_vec();
    host_value.extend_from_slice(req.host.as_bytes());
    let mut tag_value = b"id=".to_vec();
    tag_value.extend_from_slice(&id);
    let ours: Vec<(String, Vec<u8>)> = vec![
        (spec.rid.0.to_ascii_lowercase(), id.clone()),
        ("x-client-ip".into(), ip.clone().into_bytes()),
        ("x-gateway-route".into(), spec.name.as_bytes().to_vec()),
        ("x-orig-host".into(), host_value),
        ("x-trace-tag".into(), tag_value),
    ];
    let n = up.headers.len();
    assert!(n >= ours.len(), "{shown}");
    let tail: Vec<(String, Vec<u8>)> = up.headers[n - ours.len()..]
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    assert_eq!(tail, ours, "{shown}");
    // Removed fields are gone; set ones and the ID are there once.
    for h in up.headers {
        assert!(
            !matches_rule(&REQ_REMOVE, h.name),
            "{} kept\n{shown}",
            h.name
        );
    }
    for name in REQ_SET.iter().chain([&spec.rid.0]) {
        assert_eq!(values(up.headers, name).count(), 1, "{name}\n{shown}");
    }
    // Every other field goes through as it came, in order.
    const OURS: [&str; 4] = ["host", "via", "x-forwarded-for", "x-forwarded-proto"];
    let dropped = |name: &str| {
        matches_rule(&REQ_REMOVE, name)
            || matches_rule(&REQ_SET, name)
            || matches_rule(&[spec.rid.0], name)
    };
    let sent: Vec<_> = req
        .headers
        .iter()
        .filter(|h| !is(&HOP, h.name) && !is(&OURS, h.name) && !named(req.headers, h.name))
        .filter(|h| underscore_passes(h.name, spec.underscores) && !dropped(h.name))
        .map(|h| (h.name, h.value))
        .collect();
    let got: Vec<_> = up.headers[..n - ours.len()]
        .iter()
        .filter(|h| !is(&HOP, h.name) && !is(&OURS, h.name))
        .map(|h| (h.name, h.value))
        .collect();
    assert_eq!(got, sent, "{shown}");
    let proto: Vec<_> = values(up.headers, "x-forwarded-proto").collect();
    assert_eq!(proto, [b"http"], "{shown}");

    // ---- the response: what follows the request head ----
    let rest = &data[req.head_len..];
    let head_method = req.method == "HEAD";
    let mut rheaders = [EMPTY_HEADER; 64];
    let Ok(Some(resp)) = parse_response(rest, &mut rheaders, head_method, 4096) else {
        return;
    };
    let mut out = Vec::new();
    // As proxy::response does.
    if resp.status == 101 || resp.status < 200 {
        if resp.status == 101 && !req.upgrade {
            return;
        }
        let keep = Reply {
            close: false,
            keep_alive_1_0: false,
            dechunk: false,
            date: DATE,
        };
        response_head(&mut out, &resp, keep);
        let shown = lossy(&out);
        check_line_ends(&out, &shown);
        let mut again = [EMPTY_HEADER; 96];
        match parse_response(&out, &mut again, head_method, 64 * 1024) {
            Ok(Some(r)) => {
                assert_eq!(r.status, resp.status, "{shown}");
                assert_eq!(r.head_len, out.len(), "{shown}");
            }
            other => panic!("interim response does not parse: {other:?}\n{shown}"),
        }
        return;
    }
    let dechunk = resp.framing == Framing::Chunked && req.minor_version == 0;
    let close = !req.keep_alive() || resp.framing == Framing::Close || dechunk;
    let reply = Reply {
        close,
        keep_alive_1_0: req.minor_version == 0 && !close,
        dechunk,
        date: DATE,
    };
    response_fields(&mut out, &resp, reply, policy.response_drops());
    policy.response_lines(&mut out, &tags);
    out.extend_from_slice(b"\r\n");

    let shown = lossy(&out);
    check_line_ends(&out, &shown);
    let mut again = [EMPTY_HEADER; 96];
    let down = match parse_response(&out, &mut again, head_method, 64 * 1024) {
        Ok(Some(r)) => r,
        other => panic!("rewritten response does not parse: {other:?}\n{shown}"),
    };
    no_crlf(down.headers, &shown);
    assert_eq!(down.head_len, out.len(), "{shown}");
    assert_eq!(down.status, resp.status, "{shown}");
    let framing = match dechunk {
        true => Framing::Close,
        false => resp.framing,
    };
    assert_eq!(down.framing, framing, "{shown}");
    if close {
        assert!(!down.keep_alive, "{shown}");
    }

    let mut ours: Vec<(String, Vec<u8>)> = vec![(spec.rid.0.to_ascii_lowercase(), id.clone())];
    if allowed {
        ours.push(("access-control-allow-origin".into(), ALLOWED_ORIGIN.into()));
        ours.push(("access-control-allow-credentials".into(), b"true".to_vec()));
        ours.push((
            "access-control-expose-headers".into(),
            b"X-Total-Count".to_vec(),
        ));
    }
    ours.push(("vary".into(), b"Origin".to_vec()));
    ours.push(("x-frame-options".into(), b"DENY".to_vec()));
    let mut served = format!("ringway {} ", spec.name).into_bytes();
    served.extend_from_slice(&id);
    ours.push(("x-served-by".into(), served));
    let n = down.headers.len();
    assert!(n >= ours.len(), "{shown}");
    let tail: Vec<(String, Vec<u8>)> = down.headers[n - ours.len()..]
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    assert_eq!(tail, ours, "{shown}");
    let cors = down
        .headers
        .iter()
        .filter(|h| matches_rule(&["access-control-*"], h.name))
        .count();
    assert_eq!(cors, if allowed { 3 } else { 0 }, "{shown}");
    for h in down.headers {
        assert!(
            !matches_rule(&RESP_REMOVE, h.name),
            "{} kept\n{shown}",
            h.name
        );
    }
    for name in RESP_SET.iter().chain([&spec.rid.0]) {
        assert_eq!(values(down.headers, name).count(), 1, "{name}\n{shown}");
    }
    // The upstream's other fields, in order.
    const MINE: [&str; 3] = ["via", "date", "connection"];
    let dropped = |name: &str| {
        matches_rule(&RESP_REMOVE, name)
            || matches_rule(&RESP_SET, name)
            || matches_rule(&[spec.rid.0], name)
            || matches_rule(&["access-control-*"], name)
            || (dechunk && name.eq_ignore_ascii_case("transfer-encoding"))
    };
    let passed: Vec<_> = resp
        .headers
        .iter()
        .filter(|h| !is(&HOP, h.name) && !is(&MINE, h.name) && !named(resp.headers, h.name))
        .filter(|h| !dropped(h.name))
        .map(|h| (h.name, h.value))
        .collect();
    let got: Vec<_> = down.headers[..n - ours.len()]
        .iter()
        .filter(|h| !is(&HOP, h.name) && !is(&MINE, h.name))
        .map(|h| (h.name, h.value))
        .collect();
    assert_eq!(got, passed, "{shown}");
    let dates = values(down.headers, "date").count();
    assert!(dates >= 1, "{shown}");
});
