//! Per-request gateway policies over real sockets: request IDs, CORS,
//! header rules, prefix rewrites, redirects and the built-in health and
//! readiness endpoints; their config errors; and a reload that changes them.

mod support;

use std::path::Path;

use ringway::control::Command;
use ringway::{Config, Server};
use support::*;

/// A config body with an upstream "o" at `origin` and one route "api" on
/// "/" to it, with `route` added to the route.
fn gateway(origin: std::net::SocketAddr, top: &str, route: &str) -> Server {
    proxy(&format!(
        "{top}\n[[upstream]]\nname = \"o\"\nendpoints = [\"{origin}\"]\n\n\
         [[route]]\nname = \"api\"\nprefix = \"/\"\nupstream = \"o\"\n{route}\n"
    ))
}

fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        && &s[14..15] == "4"
        && "89ab".contains(&s[19..20])
}

fn config_error(body: &str) -> String {
    let text = format!("[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n{body}");
    Config::parse(Path::new("p.toml"), &text)
        .expect_err("the config is refused")
        .to_string()
}

// ---- request IDs ----

#[test]
fn request_id_is_generated_forwarded_and_returned() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = gateway(origin.addr, "[request_id]\n", "");
    let mut ids = Vec::new();
    for _ in 0..3 {
        // An untrusted client's ID is replaced, never passed on.
        let resp = request(
            proxy.addr(),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: forged\r\n\r\n",
        );
        assert_eq!(resp.status, 200);
        let id = resp.header("x-request-id").expect("an id").to_string();
        assert!(is_uuid_v4(&id), "{id}");
        ids.push(id);
    }
    let seen = origin.seen();
    for (s, id) in seen.iter().zip(&ids) {
        assert_eq!(s.header_count("x-request-id"), 1, "{}", s.head);
        assert_eq!(s.header("x-request-id"), Some(id.as_str()));
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request its own id");
}

#[test]
fn request_id_from_a_trusted_client_is_kept_only_when_valid() {
    let origin = Origin::start(|_| {
        // The upstream's own id does not reach the client: ours does.
        Reply::Raw(b"HTTP/1.1 200 OK\r\nTrace: 1\r\nTrace: 2\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let route = "request_id = { header = \"Trace\", trust_incoming = true }\n";
    let proxy = gateway(origin.addr, "", route);
    let sent = |id: &str| {
        request(
            proxy.addr(),
            &format!("GET / HTTP/1.1\r\nHost: h\r\nTrace: {id}\r\n\r\n"),
        )
    };
    let resp = sent("abc-123.XYZ");
    assert_eq!(resp.header("trace"), Some("abc-123.XYZ"));
    assert_eq!(origin.seen()[0].header("trace"), Some("abc-123.XYZ"));
    assert_eq!(resp.headers.iter().filter(|(n, _)| n == "Trace").count(), 1);
    // Too long, or not visible ASCII: a new one instead.
    for bad in ["x".repeat(65), "a b".to_string(), "caf\u{e9}".to_string()] {
        let resp = sent(&bad);
        let id = resp.header("trace").unwrap();
        assert!(is_uuid_v4(id), "{bad:?} gave {id}");
    }
}

#[test]
fn request_id_can_be_turned_off_per_route_and_is_on_direct_answers() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy(&format!(
        "[request_id]\nheader = \"X-Req\"\n[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"quiet\"\nprefix = \"/quiet\"\nupstream = \"o\"\nrequest_id = false\n\
         [[route]]\nname = \"home\"\nprefix = \"/\"\nrespond = {{ status = 200, body = \"hi\" }}\n",
        origin.addr
    ));
    let resp = get(proxy.addr(), "/quiet");
    assert_eq!(resp.header("x-req"), None);
    assert_eq!(origin.seen()[0].header("x-req"), None);
    let resp = get(proxy.addr(), "/");
    assert_eq!(resp.text(), "hi");
    assert!(is_uuid_v4(resp.header("x-req").unwrap()));
}

// ---- CORS ----

const CORS: &str = "methods = [\"GET\", \"POST\", \"OPTIONS\"]\n\
    cors = { origins = [\"https://app.example.com\", \"https://admin.example.com\"], \
    methods = [\"GET\", \"POST\"], headers = [\"Content-Type\", \"Authorization\"], \
    expose = [\"X-Total\"], credentials = true, max_age = 600 }\n";

fn with_origin(origin: &str) -> String {
    format!("GET /items HTTP/1.1\r\nHost: h\r\nOrigin: {origin}\r\n\r\n")
}

#[test]
fn cors_headers_only_for_an_allowed_origin() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    });
    let proxy = gateway(origin.addr, "", CORS);
    let resp = request(proxy.addr(), &with_origin("https://admin.example.com"));
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://admin.example.com"),
        "the origin echoed, the upstream's `*` dropped:\n{}",
        resp.head
    );
    assert_eq!(
        resp.head.matches("Access-Control-Allow-Origin").count(),
        1,
        "{}",
        resp.head
    );
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("X-Total")
    );
    assert_eq!(resp.header("vary"), Some("Origin"));

    for req in [
        with_origin("https://evil.example.com"),
        "GET /items HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
    ] {
        let resp = request(proxy.addr(), &req);
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("access-control-allow-origin"),
            None,
            "{}",
            resp.head
        );
        assert_eq!(resp.header("access-control-allow-credentials"), None);
        // The answer depends on Origin, whatever it was.
        assert_eq!(resp.header("vary"), Some("Origin"));
    }
    assert_eq!(origin.seen().len(), 3);
}

#[test]
fn cors_preflight_is_answered_204_and_never_sent_upstream() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = gateway(origin.addr, "[request_id]\n", CORS);
    let preflight = |from: &str| {
        let mut c = Client::connect(proxy.addr());
        c.send(
            format!(
                "OPTIONS /items HTTP/1.1\r\nHost: h\r\nOrigin: {from}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: content-type\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = c.read(false).unwrap();
        // Kept alive: the next request on the connection is served.
        c.send(b"GET /items HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(c.read(false).unwrap().status, 200);
        resp
    };
    let resp = preflight("https://app.example.com");
    assert_eq!(resp.status, 204, "{}", resp.head);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("Content-Type, Authorization")
    );
    assert_eq!(resp.header("access-control-max-age"), Some("600"));
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    assert!(resp.header("vary").unwrap().starts_with("Origin"));
    assert!(is_uuid_v4(resp.header("x-request-id").unwrap()));
    assert_eq!(resp.header("content-length"), None);

    let resp = preflight("https://evil.example.com");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(resp.header("access-control-allow-methods"), None);

    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "only the GETs went upstream");
    assert!(seen.iter().all(|s| s.method == "GET"));

    // OPTIONS that is no preflight goes upstream like any request.
    let resp = request(proxy.addr(), "OPTIONS /items HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(origin.seen().len(), 3);
}

#[test]
fn cors_wildcard_answers_any_origin_with_a_star() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = gateway(origin.addr, "", "cors = { origins = [\"*\"] }\n");
    let resp = request(proxy.addr(), &with_origin("https://anyone.example"));
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(resp.header("access-control-allow-credentials"), None);
}

// ---- header rules and rewrites ----

#[test]
fn header_rules_add_set_and_remove_with_substitutions() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nServer: origin/1.0\r\nX-Powered-By: php\r\nCache-Control: private\r\n\
              Content-Length: 2\r\n\r\nok"
                .to_vec(),
        )
    });
    let route = "request_id = true\n\
        request_headers = { set = { X-Client = \"${client_ip}\", X-Gw = \"${route}@${host}\" }, \
        add = { X-Trace = \"id=${request_id}\" }, remove = [\"Cookie\", \"X-Debug-*\"] }\n\
        response_headers = { set = { Cache-Control = \"no-store\" }, remove = [\"Server\", \"X-Powered-By\"], \
        add = { X-Served-By = \"${route} for ${client_ip}\" } }\n";
    let proxy = gateway(origin.addr, "", route);
    let resp = request(
        proxy.addr(),
        "GET /p HTTP/1.1\r\nHost: shop.example\r\nCookie: s=1\r\nX-Debug-A: 1\r\nx-debug-b: 2\r\nX-Client: forged\r\n\
         Accept: */*\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let s = &origin.seen()[0];
    assert_eq!(s.header("cookie"), None, "{}", s.head);
    assert_eq!(s.header("x-debug-a"), None);
    assert_eq!(s.header("x-debug-b"), None);
    assert_eq!(s.header_count("x-client"), 1);
    assert_eq!(s.header("x-client"), Some("127.0.0.1"));
    assert_eq!(s.header("x-gw"), Some("api@shop.example"));
    assert_eq!(s.header("accept"), Some("*/*"));
    let id = resp.header("x-request-id").unwrap();
    assert_eq!(s.header("x-trace"), Some(format!("id={id}").as_str()));

    assert_eq!(resp.header("server"), None, "{}", resp.head);
    assert_eq!(resp.header("x-powered-by"), None);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.head.matches("Cache-Control").count(), 1);
    assert_eq!(resp.header("x-served-by"), Some("api for 127.0.0.1"));
    assert_eq!(resp.text(), "ok");
}

#[test]
fn rewrite_prefix_replaces_the_prefix_on_a_segment_boundary() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy(&format!(
        "[[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"v1\"\nprefix = \"/api/v1\"\nupstream = \"o\"\n\
         rewrite_prefix = {{ from = \"/api/v1\", to = \"/internal/v2\" }}\n",
        origin.addr
    ));
    for (path, want) in [
        ("/api/v1/users?id=3", "/internal/v2/users?id=3"),
        ("/api/v1", "/internal/v2"),
        ("/api/v1?q", "/internal/v2?q"),
    ] {
        assert_eq!(get(proxy.addr(), path).status, 200);
        assert_eq!(origin.seen().last().unwrap().target, want, "{path}");
    }
}

// ---- redirects ----

#[test]
fn redirect_answers_with_location_and_never_goes_upstream() {
    let proxy = proxy(
        "[[route]]\nname = \"old\"\nprefix = \"/old\"\n\
         redirect = { status = 301, location = \"https://new.example${path}${query}\" }\n\
         [[route]]\nname = \"tmp\"\nprefix = \"/tmp\"\n\
         redirect = { status = 307, location = \"/elsewhere\" }\n",
    );
    let mut c = Client::connect(proxy.addr());
    c.send(b"GET /old/a/b?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\n");
    let resp = c.read(false).unwrap();
    assert_eq!(resp.status, 301);
    assert!(resp.head.starts_with("HTTP/1.1 301 Moved Permanently\r\n"));
    assert_eq!(
        resp.header("location"),
        Some("https://new.example/old/a/b?x=1&y=2")
    );
    assert_eq!(resp.header("content-length"), Some("0"));
    c.send(b"POST /tmp HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    let resp = c.read(false).unwrap();
    assert_eq!(resp.status, 307);
    assert_eq!(resp.header("location"), Some("/elsewhere"));
    let resp = get(proxy.addr(), "/old");
    assert_eq!(resp.header("location"), Some("https://new.example/old"));
}

// ---- built-in endpoints ----

#[test]
fn health_and_ready_are_answered_before_routing_and_not_counted() {
    // An endpoint where nothing listens: the first failure ejects it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy(&format!(
        "[endpoints]\nhealth = \"/health\"\nready = \"/ready\"\n\
         [[upstream]]\nname = \"live\"\nendpoints = [\"{}\"]\n\
         [[upstream]]\nname = \"dead\"\nendpoints = [\"{dead_addr}\"]\nretry = false\n\
         outlier_detection = {{ consecutive_failures = 1, eject_for = \"60s\", max_ejected_percent = 100 }}\n\
         [[route]]\nname = \"dead\"\nprefix = \"/dead\"\nupstream = \"dead\"\n\
         [[route]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"live\"\n",
        origin.addr
    ));
    let resp = get(proxy.addr(), "/health");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.text(), r#"{"status":"ok"}"#);
    let resp = get(proxy.addr(), "/ready");
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, r#"{"status":"ready"}"#)
    );
    // HEAD: the head alone; kept alive.
    let mut c = Client::connect(proxy.addr());
    c.send(b"HEAD /health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(c.read(true).unwrap().status, 200);
    c.send(b"GET /health?probe=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(c.read(false).unwrap().status, 200);
    assert!(origin.seen().is_empty(), "never routed");

    let metrics = || {
        let reply = proxy.ask(Command::Metrics).unwrap();
        reply["text"].as_str().unwrap().to_string()
    };
    assert!(
        !metrics().contains("ringway_requests_total{"),
        "health checks are not traffic:\n{}",
        metrics()
    );

    assert_eq!(get(proxy.addr(), "/dead").status, 502);
    let resp = get(proxy.addr(), "/ready");
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("\"status\":503"));
    // Liveness does not depend on upstreams.
    assert_eq!(get(proxy.addr(), "/health").status, 200);
    // Another method goes on to routing.
    let resp = request(
        proxy.addr(),
        "POST /health HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(origin.seen().len(), 1);
}

#[test]
fn without_endpoints_health_is_routed_like_any_path() {
    let origin = Origin::start(|_| ok("x"));
    let proxy = proxy_to(origin.addr, "");
    assert_eq!(get(proxy.addr(), "/health").text(), "x");
    assert_eq!(origin.seen().len(), 1);
}

// ---- config ----

#[test]
fn bad_policy_config_names_file_line_and_key() {
    let route = "[[route]]\nname = \"r\"\nprefix = \"/\"\nrespond = { status = 200 }\n";
    let cases = [
        (
            format!("{route}cors = {{ origins = [\"*\"], credentials = true }}\n"),
            "p.toml:8: `route.cors.credentials`:",
            "cannot be true with origins = [\"*\"]",
        ),
        (
            format!("{route}cors = {{ origins = [\"app.example.com\"] }}\n"),
            "p.toml:8: `route.cors.origins`:",
            "is not an origin",
        ),
        (
            format!("{route}methods = [\"GET\"]\ncors = {{ origins = [\"*\"] }}\n"),
            "p.toml:8: `route.methods`:",
            "add \"OPTIONS\"",
        ),
        (
            format!("{route}request_headers = {{ set = {{ X-A = \"${{nope}}\" }} }}\n"),
            "p.toml:8: `route.request_headers.set.X-A`:",
            "unknown variable ${nope}",
        ),
        (
            format!("{route}response_headers = {{ add = {{ X-A = \"${{host}}\" }} }}\n"),
            "p.toml:8: `route.response_headers.add.X-A`:",
            "${host} is not available here",
        ),
        (
            format!("{route}request_headers = {{ remove = [\"Content-Length\"] }}\n"),
            "p.toml:8: `route.request_headers.remove`:",
            "written by the proxy itself",
        ),
        (
            format!("{route}request_id = {{ header = \"Content-Length\" }}\n"),
            "p.toml:8: `route.request_id.header`:",
            "written by the proxy itself",
        ),
        (
            format!("{route}request_headers = {{ remove = [\"Content-*\"] }}\n"),
            "p.toml:8: `route.request_headers.remove`:",
            "would remove content-length",
        ),
        (
            format!("{route}request_headers = {{ add = {{ X-Id = \"${{request_id}}\" }} }}\n"),
            "p.toml:8: `route.request_headers.add.X-Id`:",
            "needs request_id",
        ),
        (
            format!("{route}strip_prefix = true\nrewrite_prefix = {{ from = \"/\", to = \"/x\" }}\n"),
            "p.toml:9: `route.rewrite_prefix`:",
            "not both",
        ),
        (
            "[[route]]\nname = \"r\"\nprefix = \"/\"\nredirect = { status = 200, location = \"/x\" }\n"
                .to_string(),
            "p.toml:7: `route.redirect.status`:",
            "not a redirect",
        ),
        (
            format!("[request_id]\nheader = \"X Id\"\n{route}"),
            "p.toml:5: `request_id.header`:",
            "not a header name",
        ),
        (
            "[endpoints]\nhealth = \"health\"\n".to_string(),
            "p.toml:5: `endpoints.health`:",
            "starting with '/'",
        ),
    ];
    for (body, place, reason) in cases {
        let err = config_error(&body);
        assert!(err.starts_with(place), "want {place}\ngot  {err}");
        assert!(err.contains(reason), "want {reason:?}\ngot  {err}");
    }
}

#[test]
fn a_reload_applies_changed_policies() {
    let origin = Origin::start(|_| ok("x"));
    let text = |route: &str| {
        format!(
            "[server]\nworkers = 1\npin_cores = false\n\
             [[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"o\"\nendpoints = [\"{}\"]\n\
             [[route]]\nname = \"api\"\nprefix = \"/\"\nupstream = \"o\"\n{route}",
            origin.addr
        )
    };
    let path = write_config("policies-reload.toml", &text(""));
    let proxy = Server::start(Config::load(&path).unwrap()).unwrap();
    let resp = request(proxy.addr(), &with_origin("https://app.example.com"));
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(resp.header("x-request-id"), None);

    std::fs::write(
        &path,
        text(
            "request_id = true\ncors = { origins = [\"https://app.example.com\"] }\n\
              response_headers = { add = { X-Gen = \"two\" } }\n",
        ),
    )
    .unwrap();
    // The reply comes once the shard runs the new generation.
    proxy.ask(Command::Reload).expect("reload");
    let resp = request(proxy.addr(), &with_origin("https://app.example.com"));
    assert_eq!(resp.header("x-gen"), Some("two"), "{}", resp.head);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(is_uuid_v4(resp.header("x-request-id").unwrap()));
}

#[test]
fn the_access_log_has_the_request_id_the_route_gave() {
    let origin = Origin::start(|_| ok("x"));
    let log = std::env::temp_dir().join(format!("ringway-policies-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let proxy = gateway(
        origin.addr,
        &format!(
            "[access_log]\npath = \"{}\"\n[endpoints]\nhealth = \"/health\"\n",
            log.display()
        ),
        "request_id = true\n",
    );
    assert_eq!(get(proxy.addr(), "/health").status, 200);
    let resp = request(
        proxy.addr(),
        "GET /p HTTP/1.1\r\nHost: h\r\nX-Request-Id: forged\r\n\r\n",
    );
    let id = resp.header("x-request-id").unwrap().to_string();
    // The shard hands its lines to the writer once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !text.is_empty() {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "nothing logged");
        std::thread::yield_now();
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "the health check is not logged: {text}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["request_id"], id.as_str(), "{text}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn bodies_and_pipelining_pass_through_a_route_with_every_policy() {
    let origin = Origin::start(|s| ok(&format!("got {}", s.body_len)));
    let route = "request_id = true\n\
        cors = { origins = [\"https://app.example.com\"] }\n\
        request_headers = { set = { X-A = \"${client_ip}\" }, remove = [\"X-Drop-*\"] }\n\
        response_headers = { add = { X-B = \"${request_id}\" } }\n\
        rewrite_prefix = { from = \"/\", to = \"/in/\" }\n";
    let proxy = gateway(origin.addr, "", route);
    let mut c = Client::connect(proxy.addr());
    c.send(
        b"POST /a HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example.com\r\nX-Drop-Me: 1\r\n\
          Content-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    let bodies: Vec<String> = (0..3).map(|_| c.read(false).unwrap().text()).collect();
    assert_eq!(bodies, ["got 5", "got 3", "got 0"]);
    let seen = origin.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/in/a", "/in/b", "/in/c"]);
    assert_eq!(seen[0].raw_body, b"hello");
    assert_eq!(seen[1].raw_body, b"3\r\nabc\r\n0\r\n\r\n");
    assert!(seen.iter().all(|s| s.header("x-drop-me").is_none()));
    assert!(seen.iter().all(|s| s.header("x-a") == Some("127.0.0.1")));
    assert_eq!(
        origin.connections(),
        1,
        "one upstream connection, kept alive"
    );
}
