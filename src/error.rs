//! Errors on the request path are small values: which side failed and how.
//! `Reject::write` turns one into its response from static pieces (the JSON
//! bodies are constants), so an error costs no allocation and no encoder;
//! `conn::send_error` is the one place that sends it.
#![forbid(unsafe_code)]

use std::io::Write;

use crate::ratelimit::Limited;

/// A response the proxy makes itself instead of the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400; the reason goes into the body.
    BadRequest(&'static str),
    NotFound,
    /// 405 with the `Allow` header.
    MethodNotAllowed,
    /// 421: the Host is not one the TLS certificate of the connection
    /// covers (a listener with `strict_sni`).
    Misdirected,
    /// 408: the client was too slow to send its head or body.
    RequestTimeout,
    /// 413
    PayloadTooLarge,
    /// 414
    UriTooLong,
    /// 431
    HeadersTooLarge,
    /// 502: the upstream could not be reached or answered nonsense.
    BadGateway,
    /// 503: no capacity (connection slots, buffers).
    Unavailable,
    /// 503: every endpoint of the upstream is ejected or marked down.
    NoEndpoint,
    /// 503 with `Retry-After`: the upstream has `max_concurrent` requests
    /// in flight (this shard's share of them).
    Overloaded,
    /// 504: the upstream was too slow.
    GatewayTimeout,
    /// 429, with `Retry-After` and the `X-RateLimit-*` headers; the flag
    /// adds the IETF draft `RateLimit-Policy` and `RateLimit` headers.
    TooManyRequests(Limited, bool),
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::NotFound => 404,
            Reject::MethodNotAllowed => 405,
            Reject::Misdirected => 421,
            Reject::RequestTimeout => 408,
            Reject::PayloadTooLarge => 413,
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge => 431,
            Reject::BadGateway => 502,
            Reject::Unavailable | Reject::NoEndpoint | Reject::Overloaded => 503,
            Reject::GatewayTimeout => 504,
            Reject::TooManyRequests(..) => 429,
        }
    }

    fn status_line(self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "HTTP/1.1 400 Bad Request\r\n",
            Reject::NotFound => "HTTP/1.1 404 Not Found\r\n",
            Reject::MethodNotAllowed => "HTTP/1.1 405 Method Not Allowed\r\n",
            Reject::Misdirected => "HTTP/1.1 421 Misdirected Request\r\n",
            Reject::RequestTimeout => "HTTP/1.1 408 Request Timeout\r\n",
            Reject::PayloadTooLarge => "HTTP/1.1 413 Content Too Large\r\n",
            Reject::UriTooLong => "HTTP/1.1 414 URI Too Long\r\n",
            Reject::HeadersTooLarge => "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Reject::BadGateway => "HTTP/1.1 502 Bad Gateway\r\n",
            Reject::Unavailable | Reject::NoEndpoint | Reject::Overloaded => {
                "HTTP/1.1 503 Service Unavailable\r\n"
            }
            Reject::GatewayTimeout => "HTTP/1.1 504 Gateway Timeout\r\n",
            Reject::TooManyRequests(..) => "HTTP/1.1 429 Too Many Requests\r\n",
        }
    }

    /// The JSON body, `{"error":"...","status":N}`, except for 400's reason.
    fn body(self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "",
            Reject::NotFound => r#"{"error":"no route for this request","status":404}"#,
            Reject::MethodNotAllowed => r#"{"error":"method not allowed","status":405}"#,
            Reject::Misdirected => {
                r#"{"error":"host not covered by this connection's certificate","status":421}"#
            }
            Reject::RequestTimeout => r#"{"error":"request timed out","status":408}"#,
            Reject::PayloadTooLarge => r#"{"error":"request body too large","status":413}"#,
            Reject::UriTooLong => r#"{"error":"request line too long","status":414}"#,
            Reject::HeadersTooLarge => r#"{"error":"request header too large","status":431}"#,
            Reject::BadGateway => r#"{"error":"upstream unavailable or invalid","status":502}"#,
            Reject::Unavailable => r#"{"error":"no capacity to serve the request","status":503}"#,
            Reject::NoEndpoint => r#"{"error":"every upstream endpoint is down","status":503}"#,
            Reject::Overloaded => {
                r#"{"error":"upstream at its limit of concurrent requests","status":503}"#
            }
            Reject::GatewayTimeout => r#"{"error":"upstream timed out","status":504}"#,
            Reject::TooManyRequests(..) => r#"{"error":"rate limit exceeded","status":429}"#,
        }
    }

    /// Whether the client connection must close after this response: the
    /// request stream can no longer be trusted to be in step.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Reject::BadRequest(_)
                | Reject::RequestTimeout
                | Reject::PayloadTooLarge
                | Reject::UriTooLong
                | Reject::HeadersTooLarge
        )
    }

    /// Writes the whole response; `allow` is the Allow header for a 405,
    /// `date` the shard's current `Date` value.
    pub fn write(self, out: &mut Vec<u8>, close: bool, allow: &str, date: &[u8]) {
        out.extend_from_slice(self.status_line().as_bytes());
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\nContent-Type: application/json\r\n");
        if self == Reject::MethodNotAllowed {
            out.extend_from_slice(b"Allow: ");
            out.extend_from_slice(allow.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self == Reject::Overloaded {
            // Requests in flight end in moments; a second is a polite wait.
            out.extend_from_slice(b"Retry-After: 1\r\n");
        }
        if let Reject::TooManyRequests(l, draft) = self {
            let scope = l.scope.name();
            let _ = write!(
                out,
                "Retry-After: {}\r\nX-RateLimit-Limit: {}\r\nX-RateLimit-Remaining: 0\r\nX-RateLimit-Scope: {scope}\r\n",
                l.retry_after, l.limit
            );
            if draft {
                let _ = write!(
                    out,
                    "RateLimit-Policy: \"{scope}\";q={};w={}\r\nRateLimit: \"{scope}\";r=0;t={}\r\n",
                    l.limit, l.window, l.retry_after
                );
            }
        }
        if close || self.closes() {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        match self {
            Reject::BadRequest(reason) => {
                // Reasons are our own constants: JSON-safe as they stand.
                let len = r#"{"error":"","status":400}"#.len() + reason.len();
                let _ = write!(
                    out,
                    "Content-Length: {len}\r\n\r\n{{\"error\":\"{reason}\",\"status\":400}}"
                );
            }
            _ => {
                let body = self.body();
                let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
            }
        }
    }
}

/// Why an upstream exchange failed: decides the status and whether the
/// request may be tried again on a fresh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    /// The connection closed or failed before any response byte arrived.
    ClosedEarly,
    /// The response was malformed.
    Protocol(&'static str),
    /// The connection closed or failed after some of the response came.
    Cut(&'static str),
    /// No connection slot within the queue timeout.
    Saturated,
}

impl UpstreamError {
    pub fn reject(self) -> Reject {
        match self {
            UpstreamError::Timeout => Reject::GatewayTimeout,
            UpstreamError::Saturated => Reject::Unavailable,
            _ => Reject::BadGateway,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(out: &[u8]) -> (&str, &str) {
        let s = std::str::from_utf8(out).unwrap();
        s.split_once("\r\n\r\n").unwrap()
    }

    #[test]
    fn content_length_matches_body() {
        for r in [
            Reject::BadRequest("repeated content-length"),
            Reject::NotFound,
            Reject::MethodNotAllowed,
            Reject::RequestTimeout,
            Reject::PayloadTooLarge,
            Reject::UriTooLong,
            Reject::HeadersTooLarge,
            Reject::BadGateway,
            Reject::Unavailable,
            Reject::NoEndpoint,
            Reject::Overloaded,
            Reject::GatewayTimeout,
        ] {
            let mut out = Vec::new();
            r.write(&mut out, false, "GET", b"Mon, 23 Nov 2026 12:00:00 GMT");
            let (head, body) = body_of(&out);
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{head}"
            );
            assert!(
                body.ends_with(&format!("\"status\":{}}}", r.status())),
                "{body}"
            );
            assert!(body.starts_with("{\"error\":\""), "{body}");
            assert_eq!(head.contains("Connection: close"), r.closes());
            assert!(head.contains("\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n"));
            let reason = head.lines().next().unwrap().splitn(3, ' ').nth(2).unwrap();
            assert_eq!(reason, crate::http1::encode::reason(r.status()), "{head}");
        }
    }
}
