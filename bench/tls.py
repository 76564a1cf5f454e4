#!/usr/bin/env python3
"""bench.py's tls part (BENCH_PARTS=tls): ringway, nginx and HAProxy each
terminating TLS with the same ECDSA P-256 certificate, made with openssl for
the run, in front of the same plain-HTTP origin, with the same workers
pinned as in the other parts. Every proxy is started afresh per scenario.

  - keep-alive: wrk over https, 64 connections, and the same run over plain
    HTTP so what TLS adds can be read off: req/s, p50/p99, and the proxy's
    CPU time (from /proc, as bench.py measures it) per request;
  - full handshakes: a new connection per request, no resumption: the
    proxy's CPU per connection, and connections/s;
  - resumed handshakes: the same, each connection resuming the session
    (TLS 1.3 ticket) its client's previous connection was given;
  - idle: BENCH_IDLE TLS keep-alive clients each send one request and stay
    quiet; the proxy's RSS before and 15 s after, per connection.

Handshakes are driven by a pool of Python ssl clients (`handshakes` below;
`python3 bench/tls.py PORT --clients N --seconds S [--resume]` runs the same
pool alone), not by wrk: wrk closes a connection with SSL_shutdown and
SSL_clear, which keep the session, so its next connection on that slot
resumes it, and `wrk -H "Connection: close"` measures resumed handshakes
only (nginx's $ssl_session_reused says "r" for all but each slot's first).
The pool counts `session_reused` on every connection, so each handshake
scenario reports how many connections did resume.

The part is opt-in (not in the default BENCH_PARTS): about 3 minutes on 2
cores, which would take the default run past 10. It writes results/TLS.md
and tls.json and leaves the other results alone.
"""

import argparse
import json
import multiprocessing
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

KEEPALIVE_CONNECTIONS = 64
# Handshake clients: enough processes to keep two proxy workers busy while
# they share the cores with the proxy and the origin.
CLIENTS = int(os.environ.get("BENCH_TLS_CLIENTS", str(2 * (os.cpu_count() or 2))))
NAME = "bench.test"
CLOSE = f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()


# --- the client side -------------------------------------------------------

def client_context():
    """As wrk's: no verification (the probe verifies the certificate once)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def read_to_close(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def handshake_client(port, resume, seconds, go, results):
    """One process: connection after connection, each one request with
    Connection: close read to the end, until `seconds` after `go`."""
    ctx = client_context()
    session = None
    done = reused = 0
    errors = {}
    go.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=NAME, session=session) as s:
                    s.sendall(CLOSE)
                    response = read_to_close(s)
                    if not response.startswith(b"HTTP/1.1 200"):
                        raise ValueError(f"response {response[:32]!r}")
                    done += 1
                    reused += s.session_reused
                    if resume:
                        session = s.session
        except (OSError, ValueError) as e:
            key = f"{type(e).__name__}: {e}"[:120]
            errors[key] = errors.get(key, 0) + 1
    results.put((done, reused, errors))


def handshakes(port, resume, seconds, clients, cpu=None):
    """`clients` processes of handshake_client started together; their
    connections, how many resumed, errors, the seconds they ran and, with
    `cpu` (a function giving the proxy's CPU seconds), the proxy's CPU
    over the run."""
    mp = multiprocessing.get_context("fork")
    go, results = mp.Event(), mp.Queue()
    procs = [mp.Process(target=handshake_client, args=(port, resume, seconds, go, results), daemon=True)
             for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.3)  # every client at go.wait()
    cpu0 = cpu() if cpu else 0.0
    began = time.monotonic()
    go.set()
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=seconds + 30))
    finally:
        elapsed = time.monotonic() - began
        used = cpu() - cpu0 if cpu else None
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    errors = {}
    for _, _, e in got:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    return {
        "connections": sum(g[0] for g in got),
        "resumed": sum(g[1] for g in got),
        "errors": errors,
        "seconds": elapsed,
        "cpu_seconds": used,
    }


# --- the part --------------------------------------------------------------

def make_certificate(tmp):
    cert, key = tmp / "bench.pem", tmp / "bench.key"
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-days", "2", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
           "-keyout", str(key), "-out", str(cert)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    # HAProxy reads the key from the certificate's file.
    (tmp / "bench-haproxy.pem").write_text(cert.read_text() + key.read_text())
    shown = " ".join(c.replace(str(tmp) + "/", "") for c in cmd)
    return (cert, key), shown


def probe(port, cert):
    """What an OpenSSL client negotiates, the certificate verified."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", NAME, "-CAfile", str(cert),
           "-verify_hostname", NAME, "-verify_return_error", "-brief"]
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    fields = dict(line.split(": ", 1) for line in (out.stdout + out.stderr).splitlines() if ": " in line)
    if fields.get("Verification") != "OK":
        sys.exit(f"{' '.join(cmd)}: the certificate was not verified:\n{out.stdout}{out.stderr}")
    return {
        "protocol": fields.get("Protocol version"),
        "cipher": fields.get("Ciphersuite"),
        "key_exchange": fields.get("Server Temp Key") or fields.get("Negotiated TLS1.3 group"),
        "signature": fields.get("Signature type"),
    }


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(h, url, seconds):
    cmd = ["wrk", "--latency", "-t", str(h.WORKERS), "-c", str(KEEPALIVE_CONNECTIONS), "-d", f"{seconds}s", url]
    text = h.run(cmd)
    lat = {p: to_ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    errors += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    return {
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "errors": errors,
    }, " ".join(cmd)


def keepalive(h, tmp, origin_port, pair, commands):
    rows = []
    for name in h.HTTP_PROXIES:
        for scheme in ("https", "http"):
            port = h.free_port()
            proxy = h.start(h.proxy_cmd(name, tmp, port, origin_port, pair if scheme == "https" else None),
                            port, name)
            url = f"{scheme}://127.0.0.1:{port}/"
            h.run(["wrk", "-t", str(h.WORKERS), "-c", str(KEEPALIVE_CONNECTIONS), "-d", "1s", url])  # warm-up
            cpu0 = h.cpu_seconds(proxy.pid)
            row, cmd = wrk(h, url, h.SECONDS)
            cpu = h.cpu_seconds(proxy.pid) - cpu0
            row.update(proxy=name, scheme=scheme, cpu_us_per_request=cpu * 1e6 / row["requests"],
                       peak_rss_mib=h.peak_rss_mib(proxy.pid))
            h.stop(proxy)
            commands[f"wrk/{scheme} keep-alive"] = cmd.replace(str(port), "PORT")
            rows.append(row)
            print(f"tls keep-alive: {name:<8} {scheme:<5} {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.3f} ms, "
                  f"p99 {row['p99_ms']:.3f} ms, {row['errors']} errors, {row['cpu_us_per_request']:.1f} µs/req",
                  flush=True)
    return rows


def handshake_scenario(h, tmp, origin_port, pair, resume, commands):
    rows = []
    what = "resumed" if resume else "full"
    for name in h.HTTP_PROXIES:
        port = h.free_port()
        proxy = h.start(h.proxy_cmd(name, tmp, port, origin_port, pair), port, name)
        handshakes(port, resume, 1, CLIENTS)  # warm-up
        got = handshakes(port, resume, h.SECONDS, CLIENTS, cpu=lambda: h.cpu_seconds(proxy.pid))
        h.stop(proxy)
        n = got["connections"]
        row = {
            "proxy": name,
            "connections": n,
            "resumed": got["resumed"],
            "errors": sum(got["errors"].values()),
            "error_kinds": got["errors"],
            "conn_per_s": n / got["seconds"],
            "cpu_us_per_connection": got["cpu_seconds"] * 1e6 / n if n else None,
            "seconds": got["seconds"],
        }
        rows.append(row)
        print(f"tls {what} handshakes: {name:<8} {row['conn_per_s']:,.0f} conn/s, {row['resumed']:,} of {n:,} "
              f"resumed, {row['errors']} errors, "
              f"{row['cpu_us_per_connection'] or 0:.1f} µs/conn {got['errors'] or ''}", flush=True)
    flag = " --resume" if resume else ""
    commands[f"handshakes/{what}"] = f"python3 bench/tls.py PORT --clients {CLIENTS} --seconds {h.SECONDS}{flag}"
    return rows


def idle(h, tmp, origin_port, pair):
    """As bench.py's idle part, over TLS: each client a full handshake and
    one request, then quiet."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(h.IDLE_CONNECTIONS, hard - 256)
    ctx = client_context()
    rows = []
    for name in h.HTTP_PROXIES:
        port = h.free_port()
        proxy = h.start(h.proxy_cmd(name, tmp, port, origin_port, pair), port, name)

        def connect():
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=NAME)
            h.one_request(s)
            return s

        for _ in range(16):  # warm: pools and first allocations
            connect().close()
        time.sleep(3)
        before = h.rss_kib(proxy.pid)
        conns = []
        began = time.monotonic()
        try:
            for _ in range(n):
                conns.append(connect())
            opened = time.monotonic() - began
            time.sleep(15)  # ringway's quiet-connection demotion: see bench.py's idle part
            after = h.rss_kib(proxy.pid)
        finally:
            for s in conns:
                s.close()
            h.stop(proxy)
        row = {"proxy": name, "connections": n, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
               "bytes_per_connection": (after - before) * 1024 / n, "open_seconds": opened}
        print(f"tls idle: {name:<8} {n} connections (opened in {opened:.1f} s), RSS {before / 1024:.1f} -> "
              f"{after / 1024:.1f} MiB, {row['bytes_per_connection']:,.0f} bytes each", flush=True)
        rows.append(row)
    return rows


def busy_seconds():
    """CPU time the whole machine spent busy (or stolen by its host)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds():
    """CPU time of this process and every child it has reaped (proxies,
    nginx's workers through their master, wrk, the clients)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def part(h, tmp, origin_port, origin_pid):
    """Runs every TLS scenario; the report tls.json holds. `h` is bench.py,
    the origin is already running."""
    began = time.time()
    machine0 = busy_seconds(), own_seconds(), h.cpu_seconds(origin_pid)
    pair, cert_cmd = make_certificate(tmp)
    commands = {"certificate": cert_cmd}
    negotiated = {}
    for name in h.HTTP_PROXIES:
        port = h.free_port()
        proxy = h.start(h.proxy_cmd(name, tmp, port, origin_port, pair), port, name)
        negotiated[name] = probe(port, pair[0])
        h.stop(proxy)
    commands["probe"] = (f"openssl s_client -connect 127.0.0.1:PORT -servername {NAME} -CAfile bench.pem "
                         f"-verify_hostname {NAME} -verify_return_error -brief")
    report = {"negotiated": negotiated}
    report["keepalive"] = keepalive(h, tmp, origin_port, pair, commands)
    report["full"] = handshake_scenario(h, tmp, origin_port, pair, False, commands)
    report["resumed"] = handshake_scenario(h, tmp, origin_port, pair, True, commands)
    report["idle"] = idle(h, tmp, origin_port, pair)
    info = h.machine()
    info["openssl"] = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    info["python"] = f"Python {sys.version.split()[0]} ({ssl.OPENSSL_VERSION})"
    info["handshake_clients"] = CLIENTS
    info["total_seconds"] = round(time.time() - began)
    busy, own, origin = busy_seconds(), own_seconds(), h.cpu_seconds(origin_pid)
    others = (busy - machine0[0]) - (own - machine0[1]) - (origin - machine0[2])
    info["other_cpu_share"] = others / ((time.time() - began) * (os.cpu_count() or 1))
    report["machine"] = info
    report["commands"] = commands
    return report


# --- the report ------------------------------------------------------------

def best_peer(rows, key):
    """ringway's row, and the peer's with the lowest `key`."""
    ours = next((r for r in rows if r["proxy"] == "ringway"), None)
    peers = [r for r in rows if r["proxy"] != "ringway" and r.get(key)]
    return ours, (min(peers, key=lambda r: r[key]) if peers else None)


def markdown(report):
    info, cmds = report["machine"], report["commands"]
    fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
    total = info["total_seconds"]
    lines = [
        f"Measured with `BENCH_PARTS=tls bench/run.sh` on {info['cores']} cores ({info['cpu']}), "
        f"Linux {info['kernel']}; every proxy with {info['workers']} workers, pinned, {info['seconds_per_run']} s "
        f"per run, {total // 60} min {total % 60} s in all; load generator, origin and proxy share the machine, "
        f"and other work took {info['other_cpu_share']:.0%} of its CPU time during the run. "
        f"{info['ringway']} (rustls, aws-lc-rs); {info['nginx']}; {info['haproxy'].split(' - ')[0]} "
        f"(both on the system's {info['openssl'].split(' (')[0]}); {info['wrk'].split(' Copyright')[0]}; {info['python']}.",
        "",
        f"One certificate for all, ECDSA P-256, made for the run: `{cmds['certificate']}`. Every proxy keeps "
        "sessions both ways: ringway with tickets and a cache of 10,240 sessions, nginx with "
        "`ssl_session_cache shared:SSL:10m` and tickets, HAProxy with its defaults (tickets, a cache of 20,000). "
        "nginx 1.22 is given `ssl_protocols TLSv1.2 TLSv1.3` (its default leaves TLS 1.3 out).",
        "",
        "What an OpenSSL client negotiates with each (`openssl s_client -brief`, the certificate verified):",
        "",
        "| proxy | protocol | cipher suite | key exchange | signature |",
        "|---|---|---|---|---|",
    ]
    for name, n in report["negotiated"].items():
        lines.append(f"| {name} | {n['protocol']} | {n['cipher']} | {n['key_exchange']} | {n['signature']} |")

    ka = report["keepalive"]
    plain = {r["proxy"]: r for r in ka if r["scheme"] == "http"}
    lines += [
        "",
        f"### Keep-alive, {KEEPALIVE_CONNECTIONS} connections",
        "",
        "wrk over https and, for reference, the same run over plain HTTP; the proxy's CPU time over the run "
        "divided by the requests wrk completed. \"TLS adds\" is the https figure minus the http one.",
        "",
        "| proxy | scheme | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | TLS adds µs/req | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ka:
        adds = None
        if r["scheme"] == "https" and r["proxy"] in plain:
            adds = r["cpu_us_per_request"] - plain[r["proxy"]]["cpu_us_per_request"]
        lines.append(f"| {r['proxy']} | {r['scheme']} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 3)} | "
                     f"{fmt(r['p99_ms'], 3)} | {r['errors']} | {fmt(r['cpu_us_per_request'], 1)} | "
                     f"{fmt(adds, 1)} | {fmt(r['peak_rss_mib'], 1)} |")

    for key, title, text, note in (
        ("full", "Full handshakes",
         "a new TLS connection per request, never resumed (a fresh session each time)", ""),
        ("resumed", "Resumed handshakes",
         "a new TLS connection per request, each resuming the session its client's previous connection got",
         " A TLS 1.3 resumption as these clients ask for it (psk_dhe_ke) still runs an X25519 exchange: "
         "it saves the certificate and its signature."),
    ):
        lines += [
            "",
            f"### {title}",
            "",
            f"{info['handshake_clients']} Python ssl clients, each {text}: connect, handshake, one request with "
            "`Connection: close`, read to the close. The proxy's CPU time over the run divided by the connections "
            "completed, so each figure holds a TCP connection, a request and a close besides the handshake; "
            "connections/s is bound by the clients, which share the cores with the proxy." + note,
            "",
            "| proxy | conn/s | resumed | errors | proxy CPU µs/connection |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in report[key]:
            lines.append(f"| {r['proxy']} | {fmt(r['conn_per_s'])} | {r['resumed']:,} of {r['connections']:,} | "
                         f"{r['errors']} | {fmt(r['cpu_us_per_connection'], 1)} |")
        for r in report[key]:
            if r["error_kinds"]:
                lines.append(f"\n{r['proxy']}'s errors: " + "; ".join(
                    f"`{k}` ×{v}" for k, v in r["error_kinds"].items()))

    lines += [
        "",
        "### ringway against the best peer",
        "",
        "CPU per request or connection (lower is better) and rate (higher is better):",
        "",
        "| scenario | ringway µs | best peer µs | ringway ÷ best peer (CPU) | ringway rate ÷ that peer's |",
        "|---|---:|---:|---:|---:|",
    ]
    scenarios = [
        (f"https keep-alive, {KEEPALIVE_CONNECTIONS} conns", [r for r in ka if r["scheme"] == "https"],
         "cpu_us_per_request", "rps"),
        ("full handshakes", report["full"], "cpu_us_per_connection", "conn_per_s"),
        ("resumed handshakes", report["resumed"], "cpu_us_per_connection", "conn_per_s"),
    ]
    for title, rows, cpu, rate in scenarios:
        ours, peer = best_peer(rows, cpu)
        if not ours or not peer or not ours.get(cpu):
            continue
        lines.append(f"| {title} | {fmt(ours[cpu], 1)} | {fmt(peer[cpu], 1)} ({peer['proxy']}) | "
                     f"{ours[cpu] / peer[cpu]:.2f} | {ours[rate] / peer[rate]:.2f} |")

    if report["idle"]:
        rows = report["idle"]
        lines += [
            "",
            "### Idle TLS connections",
            "",
            f"{rows[0]['connections']:,} clients each make a full handshake and send one request, then stay open "
            "and quiet; the proxy's resident memory (all its processes) before and 15 s after:",
            "",
            "| proxy | connections | RSS before MiB | RSS after MiB | bytes per connection |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(f"| {r['proxy']} | {r['connections']:,} | {r['rss_before_mib']:.1f} | "
                         f"{r['rss_after_mib']:.1f} | {r['bytes_per_connection']:,.0f} |")
        ours, peer = best_peer(rows, "bytes_per_connection")
        if ours and peer:
            lines += ["", f"ringway ÷ best peer ({peer['proxy']}): "
                      f"{ours['bytes_per_connection'] / peer['bytes_per_connection']:.2f}."]

    lines += ["", "Commands (PORT is the proxy's; files are in the run's temporary directory):", ""]
    lines += [f"- `{c}`" for k, c in sorted(cmds.items()) if k != "certificate"]
    return "\n".join(lines) + "\n"


def write(report, results):
    (results / "tls.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "TLS.md").write_text(markdown(report))


def main():
    """The handshake pool alone, against a TLS port already listening."""
    parser = argparse.ArgumentParser(description="New TLS connections, one request each, from a pool of clients.")
    parser.add_argument("port", type=int)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--resume", action="store_true", help="resume the previous connection's session")
    args = parser.parse_args()
    got = handshakes(args.port, args.resume, args.seconds, args.clients)
    got["conn_per_s"] = got["connections"] / got["seconds"]
    print(json.dumps(got, indent=2))


if __name__ == "__main__":
    main()
