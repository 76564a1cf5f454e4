//! Body and header capture for the access log, on routes that ask for it
//! (`access_log_body`, `access_log_headers`).
//!
//! What is kept while a request is served is raw: the first bytes of each
//! text body (payload only, chunk framing left out) and the request's
//! header fields. Redaction runs once, when the line is written, in one
//! pass over the kept bytes (`redact::Redactor`), so a request that is not
//! logged (sampled out) costs only the copy. The buffers belong to the
//! connection and are reused by its next request: a connection allocates
//! them at its first captured request, and a route that captures nothing
//! touches none of this.
//!
//! Only text is kept: a body whose `Content-Type` is `text/*`, JSON, XML
//! or form data, with no `Content-Encoding` (a gzip body is not text to
//! anyone reading the log). Other bodies are logged as `null`.

use crate::accesslog::json_string;
use crate::redact::Redactor;

/// One direction's body, as far as it is kept.
#[derive(Default)]
pub struct Body {
    bytes: Vec<u8>,
    /// How many more bytes are kept: 0 once full, or for a body not kept.
    room: usize,
    /// The body is text and the route captures it.
    text: bool,
}

impl Body {
    /// Starts a new body: kept up to `limit` bytes if it is text.
    pub fn start(&mut self, limit: usize, text: bool) {
        self.bytes.clear();
        self.text = text && limit > 0;
        self.room = if self.text { limit } else { 0 };
    }

    /// Keeps what fits of the next payload bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.room > 0 {
            let n = data.len().min(self.room);
            self.bytes.extend_from_slice(&data[..n]);
            self.room -= n;
        }
    }

    fn is_text(&self) -> bool {
        self.text
    }
}

/// What a connection keeps of the request being served.
#[derive(Default)]
pub struct Capture {
    /// This request is captured (its route asks for a body or headers).
    pub on: bool,
    /// The most of each body kept.
    pub limit: usize,
    pub request: Body,
    pub response: Body,
    /// The request's header fields as `name: value` lines, raw.
    headers: Vec<u8>,
    headers_on: bool,
    /// Where the redacted, escaped parts are written for the log line,
    /// and where a body is redacted on its way there.
    out: Vec<u8>,
    scratch: Vec<u8>,
}

/// The parts of a log line the capture adds, each already JSON.
pub struct Captured<'a> {
    pub headers: Option<&'a [u8]>,
    pub request_body: &'a [u8],
    pub response_body: &'a [u8],
}

impl Capture {
    /// Starts capturing a request: `limit` bytes of each text body
    /// (0: none), and the header fields of `head` if `headers`.
    pub fn start(&mut self, limit: usize, headers: bool, head: &[u8]) {
        self.on = limit > 0 || headers;
        self.limit = limit;
        self.headers_on = headers;
        self.headers.clear();
        let mut text = false;
        for line in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if headers {
                self.headers.extend_from_slice(name);
                self.headers.push(b':');
                self.headers.extend_from_slice(value);
                self.headers.push(b'\n');
            }
            text = text_field(name, value, text);
        }
        self.request.start(limit, text && !encoded(head));
        self.response.start(0, false);
    }

    /// Captures nothing of the request being served.
    pub fn stop(&mut self) {
        self.on = false;
        self.limit = 0;
        self.request.start(0, false);
        self.response.start(0, false);
    }

    /// Redacts what was kept into JSON values for the log line: the header
    /// fields as an object (a sensitive one's value `[REDACTED]`), each
    /// body as a string, or `null` when it was not text.
    pub fn render(&mut self, redactor: &Redactor) -> Captured<'_> {
        let Capture {
            request,
            response,
            headers,
            headers_on,
            out,
            scratch,
            ..
        } = self;
        out.clear();
        let mut ends = [0; 3];
        if *headers_on {
            out.push(b'{');
            for (i, line) in headers
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                let (name, value) = (&line[..colon], line.get(colon + 1..).unwrap_or_default());
                if i > 0 {
                    out.push(b',');
                }
                json_string(out, name);
                out.push(b':');
                if redactor.is_sensitive_header(name) {
                    out.extend_from_slice(b"\"[REDACTED]\"");
                } else {
                    json_string(out, value);
                }
            }
            out.push(b'}');
        }
        ends[0] = out.len();
        for (i, body) in [&*request, &*response].into_iter().enumerate() {
            if body.is_text() {
                scratch.clear();
                redactor.redact_json(&body.bytes, scratch);
                json_string(out, scratch);
            } else {
                out.extend_from_slice(b"null");
            }
            ends[i + 1] = out.len();
        }
        Captured {
            headers: headers_on.then(|| &out[..ends[0]]),
            request_body: &out[ends[0]..ends[1]],
            response_body: &out[ends[1]..ends[2]],
        }
    }
}

/// Whether a response with these header fields has a text body.
pub fn text_response(headers: &[httparse::Header]) -> bool {
    let mut text = false;
    let mut coded = false;
    for h in headers {
        text = text_field(h.name.as_bytes(), h.value.trim_ascii(), text);
        coded |= h.name.eq_ignore_ascii_case("content-encoding") && !identity(h.value);
    }
    text && !coded
}

/// Whether a header field says the body is text: `text` so far, updated
/// by a `Content-Type` field.
fn text_field(name: &[u8], value: &[u8], text: bool) -> bool {
    if !name.eq_ignore_ascii_case(b"content-type") {
        return text;
    }
    let media = value
        .split(|&b| b == b';')
        .next()
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    let mut lower = [0u8; 128];
    let Some(lower) = lower.get_mut(..media.len()) else {
        return false;
    };
    lower.copy_from_slice(media);
    lower.make_ascii_lowercase();
    let (kind, sub) = match lower.iter().position(|&b| b == b'/') {
        Some(i) => (&lower[..i], &lower[i + 1..]),
        None => return false,
    };
    kind == b"text"
        || sub == b"json"
        || sub.ends_with(b"+json")
        || sub == b"xml"
        || sub.ends_with(b"+xml")
        || sub == b"x-www-form-urlencoded"
}

/// Whether a request head has a `Content-Encoding` other than identity.
fn encoded(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        line[..colon].eq_ignore_ascii_case(b"content-encoding") && !identity(&line[colon + 1..])
    })
}

fn identity(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"identity")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(head: &str, limit: usize, headers: bool) -> Capture {
        let mut c = Capture::default();
        c.start(limit, headers, head.as_bytes());
        c
    }

    #[test]
    fn text_types() {
        for (ct, text) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/plain", true),
            ("application/x-www-form-urlencoded", true),
            ("application/soap+xml", true),
            ("application/octet-stream", false),
            ("multipart/form-data; boundary=x", false),
            ("image/png", false),
            ("json", false),
        ] {
            assert_eq!(
                text_field(b"Content-Type", ct.as_bytes(), false),
                text,
                "{ct}"
            );
        }
    }

    #[test]
    fn bodies_are_cut_redacted_and_escaped() {
        let head = "POST /x HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer abc\r\nX-Trace: \"t\"\r\n\r\n";
        let mut c = capture(head, 57, true);
        c.request.push(br#"{"user":"ann","password":"#);
        c.request
            .push(br#""hunter2","deep":{"token":[1,2]},"note":"this part is past the limit"}"#);
        let got = c.render(&Redactor::default());
        let headers: serde_json::Value = serde_json::from_slice(got.headers.unwrap()).unwrap();
        assert_eq!(headers["Content-Type"], "application/json");
        assert_eq!(headers["Authorization"], "[REDACTED]");
        assert_eq!(headers["X-Trace"], "\"t\"");
        let body: String = serde_json::from_slice(got.request_body).unwrap();
        assert_eq!(
            body,
            r#"{"user":"ann","password":"[REDACTED]","deep":{"token":"[REDACTED]"}"#
        );
        assert_eq!(got.response_body, b"null");
    }

    #[test]
    fn encoded_or_binary_bodies_are_null() {
        let head = "POST /x HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n\r\n";
        let mut c = capture(head, 64, false);
        c.request.push(b"\x1f\x8b");
        let got = c.render(&Redactor::default());
        assert!(got.headers.is_none());
        assert_eq!(got.request_body, b"null");

        let mut c = capture("GET / HTTP/1.1\r\n\r\n", 64, false);
        let ct = [httparse::Header {
            name: "content-type",
            value: b"text/plain",
        }];
        c.response.start(c.limit, text_response(&ct));
        c.response.push(b"token=abc&x=1");
        let got = c.render(&Redactor::default());
        assert_eq!(got.request_body, b"null");
        assert_eq!(got.response_body, br#""token=[REDACTED]&x=1""#);
    }
}
