//! Any bytes as a chunked body, fed whole or in pieces: never panics, and
//! the pieces give the same bytes consumed, the same end and the same
//! payload as the whole; de-chunking in place gives that payload too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway::http1::body::{BodyReader, Framing};

fn run(data: &[u8], piece: usize) -> Result<(usize, bool, Vec<u8>), ()> {
    let mut r = BodyReader::new(Framing::Chunked);
    let mut payload = Vec::new();
    let mut consumed = 0;
    for part in data.chunks(piece.max(1)) {
        let mut off = 0;
        while off < part.len() {
            let p = r
                .advance(&part[off..], |range| {
                    payload.extend_from_slice(&part[off..][range])
                })
                .map_err(drop)?;
            off += p.consumed;
            consumed += p.consumed;
            if p.done {
                return Ok((consumed, true, payload));
            }
            if p.consumed == 0 {
                break;
            }
        }
    }
    Ok((consumed, false, payload))
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let whole = run(data, data.len());
    let pieces = run(data, usize::from(piece % 17) + 1);
    // The reader is a state machine over the same bytes in the same order:
    // how they are cut must not change the outcome.
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(()), Err(())) => {}
        _ => panic!("whole {whole:?} vs pieces {pieces:?}"),
    }
    let mut copy = data.to_vec();
    let mut r = BodyReader::new(Framing::Chunked);
    if let (Ok((progress, n)), Ok((consumed, done, payload))) =
        (r.advance_dechunk(&mut copy), &whole)
    {
        assert_eq!((progress.consumed, progress.done), (*consumed, *done));
        assert_eq!(&copy[..n], payload.as_slice());
    }
});
