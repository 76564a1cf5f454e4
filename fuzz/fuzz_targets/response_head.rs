//! Any bytes as a response head: never panics; framing is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway::http1::body::Framing;
use ringway::http1::parse::{EMPTY_HEADER, parse_response};

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let head_request = first & 1 == 1;
    let mut headers = [EMPTY_HEADER; 64];
    if let Ok(Some(resp)) = parse_response(data, &mut headers, head_request, 4096) {
        assert!(resp.head_len <= data.len());
        if head_request || resp.status < 200 || resp.status == 204 || resp.status == 304 {
            assert_eq!(resp.framing, Framing::None);
        }
        if resp.framing == Framing::Close {
            assert!(!resp.keep_alive);
        }
    }
});
