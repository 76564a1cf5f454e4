//! ringway: an HTTP/1.1 reverse proxy, one io_uring event loop per core.
//! `docs/architecture.md` describes the whole; this is the map of the code.
//!
//! The map:
//! - `config`   the TOML file → a validated `Config` (errors name file, line, key)
//! - `snapshot` a `Config` compiled into what the shards read: routes, direct responses
//! - `route`    host → longest prefix on a segment boundary → method
//! - `policy`   per-route request IDs, CORS, header rules, prefix rewrite, redirects
//!   (`template`: values with `${variables}`; `requestid`: UUIDs from a per-shard generator)
//! - `http1`    sans-IO HTTP/1.1: `parse` heads, `body` framing, `encode` rewritten heads
//! - `control`  the control thread: binds listeners, starts and stops the shards, reloads
//! - `admin`    the admin socket's protocol (one JSON line each way), for `ringway ctl`
//! - `mailbox`  the two bounded lock-free queues between the control thread and a shard
//! - `shard`    one pinned thread: a monoio runtime, its listeners, messages, housekeeping
//! - `state`    what a shard owns (slab, counters, the `Generation` of config and pools)
//! - `conn`     one client connection: read head, route, answer or proxy, keep alive
//! - `stream`   a client connection's halves, plain TCP or TLS
//! - `tls`      the TLS handshake and the halves that decrypt and encrypt (rustls)
//! - `certs`    TLS certificates: load and check, choose by SNI, the rustls ServerConfig
//! - `proxy`    one proxied request: body pump ‖ response relay, retry, upgrade tunnel
//! - `upstream` per-shard, per-endpoint keep-alive pools, ejection, `max_concurrent`
//! - `balance`  how a shard picks an endpoint: round-robin, least-conn, p2c, hashing
//! - `health`   active health checks, on a thread of the control side
//! - `slab`     the shard's bounded buffer pool
//! - `io`       bounded reads and writes on leased buffers
//! - `error`    what failed, and the response that says so
//! - `hgrm`     latency histograms and their `.hgrm` text
//! - `date`     the `Date` header value, formatted once a second per shard
//!
//! A request: `shard::accept` → `conn::serve` → `Conn::plan` (parse, route,
//! rewrite the head) → `proxy::exchange` (pool checkout, `pump` ‖ `relay`,
//! checkin) → back to `conn::serve` for the next request on the connection.

pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod capture;
pub mod certs;
pub mod config;
pub mod conn;
pub mod control;
pub mod date;
pub mod error;
pub mod exporter;
pub mod handover;
pub mod health;
pub mod hgrm;
pub mod histlog;
pub mod http1;
pub mod io;
pub mod lease;
pub mod mailbox;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod redact;
pub mod requestid;
pub mod retry;
pub mod route;
pub mod shard;
pub mod slab;
pub mod snapshot;
pub mod state;
pub mod stream;
pub mod template;
pub mod tls;
pub mod tunnel;
pub mod upstream;

pub use config::Config;
pub use control::Server;
pub use snapshot::Snapshot;
