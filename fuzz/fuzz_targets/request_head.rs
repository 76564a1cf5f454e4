//! Any bytes: parsing never panics, and a head found is found again, the
//! same, when exactly its bytes are parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway::http1::parse::{EMPTY_HEADER, HeadLimits, parse_request};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 1024,
    max_header_bytes: 4096,
};

fuzz_target!(|data: &[u8]| {
    let mut headers = [EMPTY_HEADER; 64];
    let Ok(Some(req)) = parse_request(data, &mut headers, LIMITS) else {
        return;
    };
    let (len, framing, target, host) = (
        req.head_len,
        req.framing,
        req.target.to_string(),
        req.host.to_string(),
    );
    assert!(len <= data.len());
    let mut again = [EMPTY_HEADER; 64];
    let req2 = parse_request(&data[..len], &mut again, LIMITS)
        .unwrap()
        .unwrap();
    assert_eq!((req2.head_len, req2.framing), (len, framing));
    assert_eq!((req2.target, req2.host), (target.as_str(), host.as_str()));
    // The origin form; "?q" is what is left of "http://h?q" (sent as "/?q").
    assert!(
        target.starts_with('/') || target == "*" || (req2.absolute && target.starts_with('?')),
        "{target:?}"
    );
    for prefix in [len / 2, len.saturating_sub(1)] {
        let mut h = [EMPTY_HEADER; 64];
        assert!(matches!(
            parse_request(&data[..prefix], &mut h, LIMITS),
            Ok(None) | Err(_)
        ));
    }
});
