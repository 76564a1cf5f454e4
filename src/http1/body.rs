//! Body framing (RFC 9112 §6, §7.1) as a pure state machine.
//!
//! `BodyReader::advance` takes whatever bytes have arrived, says how many
//! belong to the body and whether the body is complete. Chunked bodies are
//! validated byte by byte and passed through unchanged (extensions and
//! trailers included); the payload ranges are also reported, so a caller
//! can strip the framing for an HTTP/1.0 peer.
#![forbid(unsafe_code)]

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    Length(u64),
    Chunked,
    /// The body ends when the peer closes (responses only).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError(pub &'static str);

/// Bound on one chunk-size line (size and extensions) and on the trailer section.
const MAX_CHUNK_LINE: u32 = 4096;
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits; `digits` counts the significant ones (leading
    /// zeros are valid and add nothing), `len` the bytes of the line.
    Size {
        size: u64,
        digits: u8,
        len: u32,
    },
    /// After the size: `chunk-ext` up to CR, one grammar position at a time.
    Ext {
        size: u64,
        len: u32,
        at: Ext,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the final CRLF.
    TrailerStart {
        total: u32,
    },
    TrailerName {
        total: u32,
    },
    TrailerValue {
        total: u32,
    },
    TrailerLf {
        total: u32,
    },
    FinalLf,
    End,
}

/// Where a chunk extension is in
/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )` (RFC 9112 §7.1.1),
/// ext-val being a token or a quoted-string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Whitespace that must lead to a ";".
    BeforeSemi,
    BeforeName,
    Name,
    AfterName,
    BeforeValue,
    Token,
    Quoted,
    QuotedEscape,
    /// After a value: CR, ";" or whitespace.
    AfterValue,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of input that belong to the body (framing included).
    pub consumed: usize,
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct BodyReader {
    state: State,
}

impl BodyReader {
    pub fn new(framing: Framing) -> BodyReader {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                len: 0,
            }),
            Framing::Close => State::Close,
        };
        BodyReader { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Consumes the body's bytes from the front of `input`; `on_data` is
    /// called with the range of each run of payload bytes (framing excluded).
    pub fn advance(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Progress, BodyError> {
        let mut consumed = 0;
        loop {
            let p = self.step(&input[consumed..], |r| {
                on_data(consumed + r.start..consumed + r.end)
            })?;
            consumed += p.consumed;
            if p.done || p.consumed == 0 || consumed == input.len() {
                return Ok(Progress {
                    consumed,
                    done: p.done,
                });
            }
        }
    }

    /// Like `advance`, but squeezes the chunk framing out in place: the
    /// payload ends up at `buf[..payload]`. For peers that cannot read chunked.
    pub fn advance_dechunk(&mut self, buf: &mut [u8]) -> Result<(Progress, usize), BodyError> {
        let mut consumed = 0;
        let mut payload = 0;
        loop {
            let mut run = None;
            let p = self.step(&buf[consumed..], |r| run = Some(r))?;
            if let Some(r) = run {
                buf.copy_within(consumed + r.start..consumed + r.end, payload);
                payload += r.len();
            }
            consumed += p.consumed;
            if p.done || p.consumed == 0 || consumed == buf.len() {
                let progress = Progress {
                    consumed,
                    done: p.done,
                };
                return Ok((progress, payload));
            }
        }
    }

    /// One step: stops after at most one run of payload bytes.
    fn step(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Progress, BodyError> {
        match &mut self.state {
            State::Done => Ok(Progress {
                consumed: 0,
                done: true,
            }),
            State::Close => {
                if !input.is_empty() {
                    on_data(0..input.len());
                }
                Ok(Progress {
                    consumed: input.len(),
                    done: false,
                })
            }
            State::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if n > 0 {
                    on_data(0..n);
                }
                *left -= n as u64;
                let done = *left == 0;
                if done {
                    self.state = State::Done;
                }
                Ok(Progress { consumed: n, done })
            }
            State::Chunked(c) => {
                let mut chunk = *c;
                let mut i = 0;
                let result = advance_chunked(&mut chunk, input, &mut i, &mut on_data);
                *c = chunk;
                result?;
                let done = chunk == Chunk::End;
                if done {
                    self.state = State::Done;
                }
                Ok(Progress { consumed: i, done })
            }
        }
    }
}

fn advance_chunked(
    c: &mut Chunk,
    input: &[u8],
    i: &mut usize,
    on_data: &mut impl FnMut(Range<usize>),
) -> Result<(), BodyError> {
    while *i < input.len() {
        let b = input[*i];
        *c = match *c {
            Chunk::Size { size, digits, len } => {
                if len >= MAX_CHUNK_LINE {
                    return Err(BodyError("chunk size line too long"));
                }
                let len = len + 1;
                match hex(b) {
                    Some(0) if digits == 0 => Chunk::Size { size, digits, len },
                    Some(d) if digits < 15 => Chunk::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                        len,
                    },
                    Some(_) => return Err(BodyError("chunk size too large")),
                    None if len == 1 => return Err(BodyError("invalid chunk size")),
                    None => match b {
                        b'\r' => Chunk::SizeLf { size },
                        b';' => Chunk::Ext {
                            size,
                            len,
                            at: Ext::BeforeName,
                        },
                        b' ' | b'\t' => Chunk::Ext {
                            size,
                            len,
                            at: Ext::BeforeSemi,
                        },
                        _ => return Err(BodyError("invalid chunk size")),
                    },
                }
            }
            Chunk::Ext { size, len, at } => {
                if len >= MAX_CHUNK_LINE {
                    return Err(BodyError("chunk extension too long"));
                }
                if b == b'\r' && matches!(at, Ext::Name | Ext::Token | Ext::AfterValue) {
                    Chunk::SizeLf { size }
                } else {
                    let at = chunk_ext(at, b).ok_or(BodyError("invalid chunk extension"))?;
                    Chunk::Ext {
                        size,
                        len: len + 1,
                        at,
                    }
                }
            }
            Chunk::SizeLf { size } => match b {
                b'\n' if size == 0 => Chunk::TrailerStart { total: 0 },
                b'\n' => Chunk::Data { left: size },
                _ => return Err(BodyError("bare CR in chunk size line")),
            },
            Chunk::Data { left } => {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - *i);
                on_data(*i..*i + n);
                *i += n;
                let left = left - n as u64;
                *c = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left }
                };
                return Ok(());
            }
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                _ => return Err(BodyError("chunk data longer than its size")),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size {
                    size: 0,
                    digits: 0,
                    len: 0,
                },
                _ => return Err(BodyError("bare CR after chunk data")),
            },
            // Trailer fields are field lines (RFC 9112 §7.1.2, §5): a token,
            // a colon, a value; no obs-fold.
            Chunk::TrailerStart { total } => match b {
                b'\r' => Chunk::FinalLf,
                _ if is_tchar(b) => Chunk::TrailerName {
                    total: trailer_total(total)?,
                },
                _ => return Err(BodyError("invalid trailer field")),
            },
            Chunk::TrailerName { total } => match b {
                b':' => Chunk::TrailerValue {
                    total: trailer_total(total)?,
                },
                _ if is_tchar(b) => Chunk::TrailerName {
                    total: trailer_total(total)?,
                },
                _ => return Err(BodyError("invalid trailer field")),
            },
            Chunk::TrailerValue { total } => match b {
                b'\r' => Chunk::TrailerLf { total },
                _ if (b < 0x20 && b != b'\t') || b == 0x7f => {
                    return Err(BodyError("control character in trailer"));
                }
                _ => Chunk::TrailerValue {
                    total: trailer_total(total)?,
                },
            },
            Chunk::TrailerLf { total } => match b {
                b'\n' => Chunk::TrailerStart { total },
                _ => return Err(BodyError("bare CR in trailer")),
            },
            Chunk::End => return Ok(()),
            Chunk::FinalLf => match b {
                b'\n' => {
                    *c = Chunk::End;
                    *i += 1;
                    return Ok(());
                }
                _ => return Err(BodyError("bare CR at end of chunked body")),
            },
        };
        *i += 1;
    }
    Ok(())
}

/// The next position in a chunk extension after byte `b` (CR is handled by
/// the caller); `None` if `b` cannot stand there.
fn chunk_ext(at: Ext, b: u8) -> Option<Ext> {
    let ws = b == b' ' || b == b'\t';
    Some(match at {
        Ext::BeforeSemi if ws => Ext::BeforeSemi,
        Ext::BeforeSemi | Ext::AfterValue | Ext::Token | Ext::Name | Ext::AfterName
            if b == b';' =>
        {
            Ext::BeforeName
        }
        Ext::BeforeName if ws => Ext::BeforeName,
        Ext::BeforeName | Ext::Name if is_tchar(b) => Ext::Name,
        Ext::Name | Ext::AfterName if ws => Ext::AfterName,
        Ext::Name | Ext::AfterName if b == b'=' => Ext::BeforeValue,
        Ext::BeforeValue if ws => Ext::BeforeValue,
        Ext::BeforeValue if b == b'"' => Ext::Quoted,
        Ext::BeforeValue | Ext::Token if is_tchar(b) => Ext::Token,
        Ext::Token | Ext::AfterValue if ws => Ext::BeforeSemi,
        Ext::Quoted if b == b'"' => Ext::AfterValue,
        Ext::Quoted if b == b'\\' => Ext::QuotedEscape,
        // qdtext and quoted-pair: HTAB, SP, visible ASCII, obs-text.
        Ext::Quoted | Ext::QuotedEscape if b == b'\t' || (b >= 0x20 && b != 0x7f) => Ext::Quoted,
        _ => return None,
    })
}

/// RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trailer_total(total: u32) -> Result<u32, BodyError> {
    if total >= MAX_TRAILERS {
        return Err(BodyError("trailers too large"));
    }
    Ok(total + 1)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at `at`, returns (payload, consumed, done).
    fn run(framing: Framing, input: &[u8], at: usize) -> Result<(Vec<u8>, usize, bool), BodyError> {
        let mut r = BodyReader::new(framing);
        let mut payload = Vec::new();
        let mut consumed = 0;
        let mut done = false;
        for part in [&input[..at], &input[at..]] {
            let mut off = 0;
            while off < part.len() && !done {
                let p = r.advance(&part[off..], |range| {
                    payload.extend_from_slice(&part[off..][range])
                })?;
                off += p.consumed;
                consumed += p.consumed;
                done = p.done;
                if p.consumed == 0 {
                    break;
                }
            }
        }
        Ok((payload, consumed, done))
    }

    #[test]
    fn chunked_at_every_split() {
        let body =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for at in 0..=body.len() {
            let (payload, consumed, done) = run(Framing::Chunked, body, at).unwrap();
            assert_eq!(payload, b"Wikipedia in\r\n\r\nchunks.", "split {at}");
            assert_eq!((consumed, done), (end, true), "split {at}");
        }
    }

    #[test]
    fn dechunk_in_place() {
        let mut body = b"4\r\nWiki\r\n5;x\r\npedia\r\n0\r\n\r\nNEXT".to_vec();
        let mut r = BodyReader::new(Framing::Chunked);
        let (p, payload) = r.advance_dechunk(&mut body).unwrap();
        assert_eq!(&body[..payload], b"Wikipedia");
        assert_eq!((p.consumed, p.done), (body.len() - 4, true));
    }

    #[test]
    fn chunked_errors() {
        let bad: [&[u8]; 21] = [
            b"x\r\n",
            b"1;\r\nA\r\n0\r\n\r\n",
            b"1 \r\nA\r\n0\r\n\r\n",
            b"1;a=\r\nA\r\n0\r\n\r\n",
            b"1;=v\r\nA\r\n0\r\n\r\n",
            b"1;a b\r\nA\r\n0\r\n\r\n",
            b"1;a=\"x\r\nA\r\n0\r\n\r\n",
            b"1;a=x y\r\nA\r\n0\r\n\r\n",
            b"1;a@\r\nA\r\n0\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nX Y: v\r\n\r\n",
            b"\r\n",
            b"-1\r\n",
            b"1\nA\r\n0\r\n\r\n",
            b"1\r\nAB\r\n",
            b"1\r\nA\n0\r\n\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\nX: \x01\r\n\r\n",
            b"0\r\n\rx",
        ];
        for b in bad {
            for at in 0..=b.len() {
                assert!(
                    run(Framing::Chunked, b, at).is_err(),
                    "{:?} split {at}",
                    String::from_utf8_lossy(b)
                );
            }
        }
    }

    #[test]
    fn chunk_extension_grammar() {
        // BWS around ";" and "=", tokens and quoted strings (with escapes).
        for line in [
            "1;a\r\n",
            "1;a=b\r\n",
            "1 ; a = b ;c\r\n",
            "1;a=\"x y;\\\"z\"\r\n",
            "1;a=\"\" ;b\r\n",
            "1\t;a\r\n",
        ] {
            let body = format!("{line}A\r\n0\r\n\r\n");
            for at in 0..=body.len() {
                let (payload, _, done) = run(Framing::Chunked, body.as_bytes(), at)
                    .unwrap_or_else(|e| panic!("{line:?} split {at}: {e:?}"));
                assert_eq!((payload.as_slice(), done), (&b"A"[..], true), "{line:?}");
            }
        }
    }

    #[test]
    fn leading_zeros_in_a_chunk_size_are_not_a_large_size() {
        let body = b"000000000000000000000001\r\nA\r\n00000\r\n\r\n";
        for at in 0..=body.len() {
            let (payload, consumed, done) = run(Framing::Chunked, body, at).unwrap();
            assert_eq!(
                (payload.as_slice(), consumed, done),
                (&b"A"[..], body.len(), true)
            );
        }
    }

    #[test]
    fn length_stops_at_its_end() {
        let (payload, consumed, done) = run(Framing::Length(3), b"abcdef", 1).unwrap();
        assert_eq!((payload.as_slice(), consumed, done), (&b"abc"[..], 3, true));
        let (_, consumed, done) = run(Framing::Length(10), b"abc", 2).unwrap();
        assert_eq!((consumed, done), (3, false));
    }

    #[test]
    fn close_never_ends() {
        let (payload, consumed, done) = run(Framing::Close, b"abc", 1).unwrap();
        assert_eq!(
            (payload.as_slice(), consumed, done),
            (&b"abc"[..], 3, false)
        );
    }
}
