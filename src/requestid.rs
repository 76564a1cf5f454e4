//! Request IDs: random (version 4) UUIDs from a generator per thread, so
//! per shard (no lock, no shared cache line, no allocation), and the check
//! a client's own ID must pass to be kept.
#![forbid(unsafe_code)]

use std::cell::Cell;

/// The longest request ID taken from a trusted client; a generated one is
/// a UUID of 36 characters.
pub const MAX_REQUEST_ID: usize = 64;

/// A request ID taken from a client: 1 to `MAX_REQUEST_ID` visible ASCII
/// characters, so it is safe in a header and a log line.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

thread_local! {
    /// The state of this thread's request ID generator. Each shard is a
    /// thread, so this is per shard: no lock and no shared cache line.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The next 64 bits of this thread's wyrand generator, seeded on first use
/// from the clock, the process and the thread. Not cryptographic: an ID
/// names a request, it guards nothing.
fn next_random() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = seed(state as *const Cell<u64> as usize as u64);
        }
        s = s.wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn seed(thread: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = now ^ thread.rotate_left(29) ^ u64::from(std::process::id()).rotate_left(47);
    // Never 0, which means "not seeded".
    mixed | 1
}

/// Writes a random (version 4) UUID, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
pub fn new_uuid(out: &mut [u8; 36]) {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next_random().to_le_bytes());
    bytes[8..].copy_from_slice(&next_random().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pos = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[pos] = b'-';
            pos += 1;
        }
        out[pos] = HEX[usize::from(b >> 4)];
        out[pos + 1] = HEX[usize::from(b & 0xf)];
        pos += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (mut a, mut b) = ([0u8; 36], [0u8; 36]);
        new_uuid(&mut a);
        new_uuid(&mut b);
        assert_ne!(a, b);
        let s = std::str::from_utf8(&a).unwrap();
        let groups: Vec<usize> = s.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{s}");
        assert_eq!(&s[14..15], "4", "{s}");
        assert!("89ab".contains(&s[19..20]), "{s}");
    }

    #[test]
    fn request_ids_from_clients_are_bounded_visible_ascii() {
        assert!(valid_request_id(b"abc-123"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; MAX_REQUEST_ID + 1]));
        assert!(!valid_request_id("\u{e9}".as_bytes()));
    }
}
