//! ringway-origin: a test origin for ringway's tests and benchmarks.
//!
//! Thread-per-core on monoio like the proxy, with an SO_REUSEPORT listener
//! per thread. Every response is made from the command-line defaults, which
//! a request can override in its query string: `size=N` (body bytes),
//! `status=S`, `delay=MS`, `chunked=1`. `POST /echo` (any method) sends the
//! request body back. Request heads are parsed with ringway's own codec.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use ringway::http1::body::{BodyReader, Framing};
use ringway::http1::parse::{EMPTY_HEADER, HeadLimits, parse_request};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringway-origin",
    version,
    about = "Fast configurable HTTP/1.1 test origin"
)]
struct Args {
    /// Address to listen on (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Threads, each with its own event loop and listening socket.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Response body size in bytes (query: size=N).
    #[arg(long, default_value_t = 13)]
    size: usize,
    /// Response status (query: status=S).
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Delay before answering, in milliseconds (query: delay=MS).
    #[arg(long, default_value_t = 0)]
    delay: u64,
    /// Send the body chunked (query: chunked=1).
    #[arg(long)]
    chunked: bool,
}

/// Bodies are slices of one pattern buffer; larger bodies repeat it.
const PATTERN_LEN: usize = 1 << 20;
const MAX_ECHO: usize = 64 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pattern: &'static [u8] = Box::leak(
        (0..PATTERN_LEN)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
            .collect::<Vec<u8>>()
            .into_boxed_slice(),
    );
    let mut listeners = Vec::new();
    let mut addr = args.listen;
    for _ in 0..args.threads.max(1) {
        let l = bind(addr).with_context(|| format!("cannot bind {addr}"))?;
        addr = l.local_addr()?;
        listeners.push(l);
    }
    println!("ringway-origin listening on http://{addr}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let args = args.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(l)?;
                    loop {
                        let (stream, _) = listener.accept().await?;
                        let args = args.clone();
                        monoio::spawn(async move { serve(stream, &args, pattern).await });
                    }
                })
            })
        })
        .collect();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            return Err(e.into());
        }
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

struct Answer {
    status: u16,
    size: usize,
    delay: u64,
    chunked: bool,
    echo: bool,
    keep_alive: bool,
    head: bool,
}

async fn serve(mut s: TcpStream, args: &Args, pattern: &'static [u8]) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let limits = HeadLimits {
        max_request_line: 16 << 10,
        max_header_bytes: 60 << 10,
    };
    loop {
        // Read a head.
        let (answer, head_len, framing) = loop {
            let mut headers = [EMPTY_HEADER; 128];
            match parse_request(&buf, &mut headers, limits) {
                Ok(Some(req)) => {
                    let mut a = Answer {
                        status: args.status,
                        size: args.size,
                        delay: args.delay,
                        chunked: args.chunked,
                        echo: req.path == "/echo",
                        keep_alive: req.keep_alive(),
                        head: req.method == "HEAD",
                    };
                    if let Some((_, query)) = req.target.split_once('?') {
                        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                            match k {
                                "size" => a.size = v.parse().unwrap_or(a.size),
                                "status" => a.status = v.parse().unwrap_or(a.status),
                                "delay" => a.delay = v.parse().unwrap_or(a.delay),
                                "chunked" => a.chunked = v == "1" || v == "true",
                                _ => {}
                            }
                        }
                    }
                    break (a, req.head_len, req.framing);
                }
                Ok(None) => {}
                Err(_) => {
                    let _ = s.write_all(&b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..]).await;
                    return;
                }
            }
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        // Read (and keep, for echo) the body.
        let mut reader = BodyReader::new(framing);
        let mut echo: Vec<u8> = Vec::new();
        let mut pos = head_len;
        loop {
            let Ok(p) = reader.advance(&buf[pos..], |r| {
                if answer.echo && echo.len() < MAX_ECHO {
                    echo.extend_from_slice(&buf[pos + r.start..pos + r.end]);
                }
            }) else {
                return;
            };
            pos += p.consumed;
            if p.done || framing == Framing::None {
                break;
            }
            buf.clear();
            pos = 0;
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        }
        buf.drain(..pos);

        if answer.delay > 0 {
            monoio::time::sleep(Duration::from_millis(answer.delay)).await;
        }
        let size = if answer.echo { echo.len() } else { answer.size };
        out.clear();
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                answer.status,
                if answer.status < 400 { "OK" } else { "Error" }
            )
            .as_bytes(),
        );
        if answer.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else {
            out.extend_from_slice(format!("Content-Length: {size}\r\n").as_bytes());
        }
        if !answer.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !answer.head {
            let body: &[u8] = if answer.echo { &echo } else { pattern };
            let mut left = size;
            while left > 0 {
                let off = (size - left) % body.len();
                let n = left.min(body.len() - off).min(256 << 10);
                let piece = &body[off..off + n];
                if answer.chunked {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                }
                out.extend_from_slice(piece);
                if answer.chunked {
                    out.extend_from_slice(b"\r\n");
                }
                left -= piece.len();
                if out.len() >= 256 << 10 {
                    let (res, back) = s.write_all(std::mem::take(&mut out)).await;
                    out = back;
                    out.clear();
                    if res.is_err() {
                        return;
                    }
                }
            }
            if answer.chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        let (res, back) = s.write_all(std::mem::take(&mut out)).await;
        out = back;
        if res.is_err() || !answer.keep_alive {
            return;
        }
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.capacity());
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = s
        .read(monoio::buf::IoBufMut::slice_mut(
            std::mem::take(buf),
            len..cap,
        ))
        .await;
    *buf = slice.into_inner();
    matches!(res, Ok(n) if n > 0)
}
