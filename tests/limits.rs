//! Config limits as an operator meets them: every error names the line of
//! the key that is wrong, in every section (a key left at its default, the
//! line of its table), and a key path maps to the line it is written on.
//! The warnings about limits that contradict each other are tested in
//! `snapshot.rs`, the sizes in `config.rs`.

use std::path::Path;

use ringway::Config;
use ringway::config::ConfigError;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

/// A listener on lines 1 to 3.
const BASE: &str = "[[listener]]\nname = \"main\"\nbind = \"127.0.0.1:0\"\n";

/// Asserts that `text` is refused with "test.toml:LINE: `KEY`: ...REASON...".
fn refused_at(text: &str, line: usize, key: &str, reason: &str) {
    let err = match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    };
    let place = format!("test.toml:{line}: `{key}`:");
    assert!(
        err.starts_with(&place),
        "want {place}\ngot  {err}\nin\n{text}"
    );
    assert!(err.contains(reason), "want {reason:?}\ngot  {err}");
}

#[test]
fn unknown_keys_name_their_line_in_every_section() {
    let sections = [
        ("[server]", ""),
        ("[timeouts]", ""),
        ("[limits]", ""),
        ("[[listener]]", "name = \"b\"\nbind = \"127.0.0.1:0\"\n"),
        (
            "[[upstream]]",
            "name = \"u\"\nendpoints = [\"127.0.0.1:80\"]\n",
        ),
        (
            "[[route]]",
            "name = \"r\"\nprefix = \"/\"\nrespond = { status = 200 }\n",
        ),
    ];
    for (header, keys) in sections {
        let text = format!("{BASE}\n{header}\n{keys}\nmax_conections = 1\n");
        let line = text.lines().count();
        refused_at(
            &text,
            line,
            "max_conections",
            "unknown field `max_conections`",
        );
    }
}

#[test]
fn a_missing_key_is_named_on_its_table_line() {
    let text = format!("{BASE}\n[[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\n");
    refused_at(&text, 5, "route.prefix", "missing field `prefix`");
}

#[test]
fn sizes_that_are_not_whole_bytes_say_so() {
    let limits = |value: &str| format!("{BASE}[limits]\nmax_body_bytes = {value}\n");
    refused_at(&limits("-1"), 5, "max_body_bytes", "must not be negative");
    refused_at(&limits("1.5"), 5, "max_body_bytes", "expected a size");
    let ok = parse(&limits("1024")).unwrap();
    assert_eq!(ok.limits.max_body_bytes.0, 1024);
}

#[test]
fn server_errors_name_the_key_line() {
    refused_at(
        &format!("{BASE}[server]\nworkers = 2\n\nmax_connections = 0\n"),
        7,
        "server.max_connections",
        "at least 1",
    );
}

#[test]
fn listener_errors_name_the_key_line() {
    let text = format!("{BASE}\n[[listener]]\nname = \"b\"\n\nbind = \"nowhere\"\n");
    refused_at(&text, 8, "listener.bind", "not an address");
    let text = format!("{BASE}\n[[listener]]\nbind = \"127.0.0.1:0\"\nname = \"main\"\n");
    refused_at(&text, 7, "listener.name", "duplicate listener name 'main'");
    refused_at("", 1, "listener", "no [[listener]]");
}

#[test]
fn timeout_errors_name_the_key_line() {
    let text = format!("{BASE}[timeouts]\nclient_header = \"5s\"\nupstream_idle = \"0s\"\n");
    refused_at(&text, 6, "timeouts.upstream_idle", "more than 0");
    // 0 means off, or no keep-alive, where it is allowed.
    parse(&format!(
        "{BASE}[timeouts]\nrequest_total = \"0s\"\nkeepalive_idle = \"0s\"\n"
    ))
    .unwrap();
}

#[test]
fn limit_errors_name_the_key_line() {
    let limits = |body: &str| format!("{BASE}[limits]\nmax_headers = 50\n{body}");
    refused_at(
        &limits("buffer_size = \"1KiB\"\n"),
        6,
        "limits.buffer_size",
        "between 4KiB and 16MiB",
    );
    refused_at(
        &limits("buffer_size = \"64KiB\"\nmax_header_bytes = \"128KiB\"\n"),
        7,
        "limits.max_header_bytes",
        "must not exceed limits.buffer_size (65536)",
    );
    // max_header_bytes left at its 16KiB: the key written is to blame.
    refused_at(
        &limits("buffer_size = \"8KiB\"\n"),
        6,
        "limits.buffer_size",
        "limits.max_header_bytes (16384) must not exceed limits.buffer_size (8192)",
    );
    refused_at(
        &limits("max_request_line = \"32KiB\"\n"),
        6,
        "limits.max_request_line",
        "must not exceed limits.max_header_bytes",
    );
    refused_at(
        &format!("{BASE}[limits]\n\nmax_headers = 0\n"),
        6,
        "limits.max_headers",
        "between 1 and 256",
    );
    refused_at(
        &limits("max_buffer_bytes = \"64KiB\"\n"),
        6,
        "limits.max_buffer_bytes",
        "holds 2 buffers",
    );
    refused_at(
        &limits(
            "buffer_size = \"4KiB\"\nmax_header_bytes = \"4KiB\"\nmax_request_line = \"1KiB\"\n\
             max_buffer_bytes = \"8GiB\"\n",
        ),
        9,
        "limits.max_buffer_bytes",
        "between 4 and 1048576",
    );
}

const UPSTREAM: &str = "\n[[upstream]]\nname = \"u\"\n";

#[test]
fn upstream_errors_name_the_key_line() {
    let text = format!("{BASE}{UPSTREAM}endpoints = [\n  \"127.0.0.1:80\",\n  \"127.0.0.1\",\n]\n");
    refused_at(&text, 9, "upstream.endpoints", "cannot resolve '127.0.0.1'");
    let text = format!("{BASE}{UPSTREAM}endpoints = []\n");
    refused_at(&text, 7, "upstream.endpoints", "at least one");
    let ep = "endpoints = [\"127.0.0.1:80\"]\n";
    let text = format!("{BASE}{UPSTREAM}{ep}max_per_endpoint = 0\n");
    refused_at(&text, 8, "upstream.max_per_endpoint", "at least 1");
    let text = format!("{BASE}{UPSTREAM}{ep}max_idle_per_endpoint = 8\nmax_per_endpoint = 4\n");
    refused_at(
        &text,
        8,
        "upstream.max_idle_per_endpoint",
        "more than max_per_endpoint (4)",
    );
    let text = format!("{BASE}{UPSTREAM}{ep}{UPSTREAM}{ep}");
    refused_at(&text, 10, "upstream.name", "duplicate upstream name 'u'");
    let text =
        format!("{BASE}{UPSTREAM}{ep}max_idle_per_endpoint = 100000\nmax_per_endpoint = 100000\n");
    refused_at(&text, 8, "upstream.max_idle_per_endpoint", "at most 65535");
}

#[test]
fn default_idle_count_follows_a_smaller_max_per_endpoint() {
    let text = format!("{BASE}{UPSTREAM}endpoints = [\"127.0.0.1:80\"]\nmax_per_endpoint = 16\n");
    let c = parse(&text).unwrap();
    assert_eq!(c.upstreams[0].max_idle_per_endpoint, 16);
    assert_eq!(c.upstreams[0].max_per_endpoint, 16);
}

#[test]
fn route_errors_name_the_key_line() {
    let route = |body: &str| format!("{BASE}\n[[route]]\nname = \"r\"\n{body}");
    let ok = "prefix = \"/\"\nrespond = { status = 200 }\n";
    refused_at(
        &route("prefix = \"api\"\n"),
        7,
        "route.prefix",
        "must start with '/'",
    );
    refused_at(
        &route("host = \"a b\"\nprefix = \"/\"\n"),
        7,
        "route.host",
        "not a host name",
    );
    refused_at(
        &route("prefix = \"/\"\nmethods = [\"GET\",\n  \"get\"]\n"),
        9,
        "route.methods",
        "'get' is not a method",
    );
    refused_at(
        &route("prefix = \"/\"\n\nupstream = \"x\"\n"),
        9,
        "route.upstream",
        "no [[upstream]] named 'x'",
    );
    refused_at(
        &route("prefix = \"/\"\nrespond = {\n  body = \"x\",\n  status = 99 }\n"),
        10,
        "route.respond.status",
        "200..=599",
    );
    refused_at(
        &route(&format!("{ok}set_host = \"a b\"\n")),
        9,
        "route.set_host",
        "without spaces",
    );
    refused_at(&route("prefix = \"/\"\n"), 5, "route", "exactly one of");
    let twice = format!("{}\n[[route]]\nprefix = \"/x\"\nname = \"r\"\n", route(ok));
    refused_at(&twice, 12, "route.name", "duplicate route name 'r'");
    refused_at(
        &route(&format!("{ok}timeout = \"soon\"\n")),
        9,
        "timeout",
        "not a duration",
    );
}

#[test]
fn key_lines_fall_back_to_the_table_then_line_1() {
    let c = parse(&format!("# top\n{BASE}[limits]\nmax_headers = 50\n")).unwrap();
    assert_eq!(c.keys.written("limits.max_headers"), Some(6));
    assert_eq!(c.keys.written("limits.buffer_size"), None);
    assert_eq!(c.keys.line("limits.buffer_size"), 5);
    assert_eq!(c.keys.line("listener.0.bind"), 4);
    assert_eq!(c.keys.line("timeouts.upstream_connect"), 1);
    assert_eq!(
        c.warning("listener.0.bind", "x"),
        "test.toml:4: `listener.bind`: x"
    );
}
