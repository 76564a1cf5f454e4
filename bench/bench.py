#!/usr/bin/env python3
"""ringway vs nginx vs HAProxy: the same origin, the same worker count, the
same load. Run through bench/run.sh, which installs and builds what this needs.

Two parts, both against one ringway-origin:

Closed loop. For every scenario each proxy is started afresh (so peak RSS is
the scenario's), warmed with wrk for a second, then measured:
  - wrk: requests/s;
  - ringway-load: requests/s and p50/p99/p99.9 latency, and over that run the
    proxy's own CPU time (utime+stime of all its processes, from /proc)
    divided by the requests it completed: the figure that stays stable on a
    shared machine.
Beside the HTTP proxies runs a TCP relay, HAProxy in `mode tcp` (bytes
copied, one upstream connection per client connection): the floor any HTTP
proxy's CPU per request is set against.

Added latency. Open loop at 25%, 50% and 75% of the slowest HTTP proxy's
closed-loop maximum (ringway-load, small keep-alive, 64 connections),
straight to the origin and through each proxy (each started afresh and
warmed for a second at the same rate); each figure minus the direct one is
what the proxy adds. Every run's latency is kept as .hgrm under
results/added-latency/, for `ringway-histo compare direct-50.hgrm
ringway-50.hgrm ...`, and its schedule lag (how late ringway-load sent) is
reported beside it.

Idle connections. BENCH_IDLE keep-alive connections (default 4,000) each
send one request through each HTTP proxy, then stay open and quiet; the
proxy's resident memory (VmRSS of all its processes) before and 15 s
after, divided by the connections, is what one quiet client costs. Past
4,000 the proxies' connection caps (ringway's max_connections, nginx's
worker_connections, HAProxy's maxconn) are raised to fit (and ringway's
max_buffer_bytes: a connection keeps its 32 KiB read buffer for the first
second or two of quiet, so clients that all arrive at once hold one each
for a moment). The client and the proxies need a descriptor a connection
each: the open-file limit is raised to fit where that is allowed
(CAP_SYS_RESOURCE), else the count stops 100 short of the hard limit
(19,900 of BENCH_IDLE=20000 where the hard limit is 20,000).

TLS, opt-in (BENCH_PARTS=tls; about 3 minutes, which would take the
default run past 10): each proxy terminating TLS with one certificate, kept
alive, full and resumed handshakes, idle TLS clients; bench/tls.py says
how. It writes results/TLS.md and tls.json.

BENCH_PARTS picks the parts (default "closed,added,idle"); a run of "idle"
alone writes results/IDLE.md and idle.json, one of "tls" alone TLS.md and
tls.json, and each leaves the rest alone. The binaries are taken from
$CARGO_TARGET_DIR/release when it is set, else target/release.

Every process started here is stopped here, also on error or Ctrl-C.
"""

import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tls

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
WORKERS = int(os.environ.get("BENCH_WORKERS", str(os.cpu_count() or 2)))
PROXIES = os.environ.get("BENCH_PROXIES", "ringway,nginx,haproxy,relay").split(",")
HTTP_PROXIES = [p for p in PROXIES if p != "relay"]
# Rewrite the README's table between its bench markers (off unless asked).
UPDATE_README = os.environ.get("BENCH_README") == "1"
PARTS = os.environ.get("BENCH_PARTS", "closed,added,idle").split(",")
IDLE_CONNECTIONS = int(os.environ.get("BENCH_IDLE", "4000"))
# Connection caps that fit the idle part (the defaults at up to 7,168).
MAX_CONNS = max(8192, IDLE_CONNECTIONS + 1024)
TICK = os.sysconf("SC_CLK_TCK")

# name, path, connections, keep-alive: closed loop
SCENARIOS = [
    ("small keep-alive, 8 conns", "/", 8, True),
    ("small keep-alive, 16 conns", "/", 16, True),
    ("small keep-alive, 32 conns", "/", 32, True),
    ("small keep-alive, 64 conns", "/", 64, True),
    ("small keep-alive, 256 conns", "/", 256, True),
    ("16 KiB response, 64 conns", "/?size=16384", 64, True),
    ("new connection per request, 64 conns", "/", 64, False),
]
# The closed-loop scenario whose slowest HTTP proxy sets the open-loop rates.
CAPACITY_SCENARIO = "small keep-alive, 64 conns"
OPEN_LOOP_FRACTIONS = [0.25, 0.5, 0.75]
OPEN_LOOP_CONNECTIONS = 64

started = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within 10s")


def start(cmd, port, what):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started.append(proc)
    wait_port(port, proc, what)
    return proc


def stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    if proc in started:
        started.remove(proc)


def tree(pid):
    """The process and its children (nginx's workers), by /proc."""
    pids = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    pids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / TICK


def status_kib(pid, field):
    """A /proc status field (VmRSS, VmHWM) summed over the process tree, in KiB."""
    kib = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib


def peak_rss_mib(pid):
    return status_kib(pid, "VmHWM") / 1024


def proxy_cmd(name, tmp, port, origin, tls_pair=None):
    """The command that runs proxy `name` on `port`; with `tls_pair`, a
    (cert, key) pair of files, it terminates TLS there (bench/tls.py)."""
    if name == "ringway":
        listener_tls = ""
        if tls_pair:
            listener_tls = f'tls = {{ certificates = [ {{ cert = "{tls_pair[0]}", key = "{tls_pair[1]}" }} ] }}'
        conf = tmp / "ringway.toml"
        conf.write_text(f"""[server]
workers = {WORKERS}
pin_cores = true
max_connections = {MAX_CONNS}
[limits]
max_buffer_bytes = "{MAX_CONNS * 32}KiB"
[[listener]]
name = "bench"
bind = "127.0.0.1:{port}"
{listener_tls}
[[upstream]]
name = "origin"
endpoints = ["127.0.0.1:{origin}"]
max_idle_per_endpoint = 512
[[route]]
name = "all"
prefix = "/"
upstream = "origin"
""")
        return [str(TARGET / "ringway"), "--config", str(conf)]
    if name == "nginx":
        ssl, server_tls = "", ""
        if tls_pair:
            # nginx 1.22 leaves TLS 1.3 out by default.
            ssl = " ssl"
            server_tls = f"""ssl_certificate {tls_pair[0]};
        ssl_certificate_key {tls_pair[1]};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;"""
        conf = tmp / "nginx.conf"
        conf.write_text(f"""worker_processes {WORKERS};
worker_cpu_affinity auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections {max(16384, 2 * MAX_CONNS)}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl} reuseport backlog=4096;
        {server_tls}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            {"proxy_set_header X-Forwarded-Proto $scheme;" if tls_pair else ""}
        }}
    }}
}}
""")
        return ["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    if name == "relay":
        conf = tmp / "relay.cfg"
        conf.write_text(f"""global
    nbthread {WORKERS}
    cpu-map auto:1/1-{WORKERS} 0-{WORKERS - 1}
    maxconn {max(8000, IDLE_CONNECTIONS + 1024)}
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend relay
    bind 127.0.0.1:{port}
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin}
""")
        return ["haproxy", "-db", "-f", str(conf)]
    if name == "haproxy":
        bind_tls = f" ssl crt {tmp / 'bench-haproxy.pem'}" if tls_pair else ""
        conf = tmp / "haproxy.cfg"
        conf.write_text(f"""global
    nbthread {WORKERS}
    cpu-map auto:1/1-{WORKERS} 0-{WORKERS - 1}
    maxconn {max(8000, IDLE_CONNECTIONS + 1024)}
defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}{bind_tls}
    {"http-request set-header X-Forwarded-Proto https" if tls_pair else ""}
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin}
""")
        return ["haproxy", "-db", "-f", str(conf)]
    sys.exit(f"unknown proxy {name}")


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS * 4 + 60)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def wrk(url, conns, keepalive, seconds):
    cmd = ["wrk", "-t", str(min(WORKERS, conns)), "-c", str(conns), "-d", f"{seconds}s", url]
    if not keepalive:
        cmd[1:1] = ["-H", "Connection: close"]
    text = run(cmd)
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    shown = " ".join(f"'{c}'" if " " in c else c for c in cmd)
    return (float(m.group(1)) if m else 0.0), shown


def load(url, conns, keepalive, rate, tmp, hgrm=None, seconds=SECONDS):
    out = tmp / "load.json"
    cmd = [str(TARGET / "ringway-load"), url, "-c", str(conns), "-t", str(WORKERS), "-d", f"{seconds}s",
           "-w", "0s", "--json", str(out)]
    if not keepalive:
        cmd.append("--no-keepalive")
    if rate:
        cmd += ["-R", str(int(rate))]
    if hgrm:
        cmd += ["--hgrm", str(hgrm)]
    run(cmd)
    hidden = {str(out), str(hgrm), "--json", "--hgrm"}
    shown = " ".join(["ringway-load" if c == cmd[0] else c for c in cmd if c not in hidden])
    return json.loads(out.read_text()), shown


def machine():
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def version(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except OSError:
            return "absent"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "workers": WORKERS,
        "seconds_per_run": SECONDS,
        "ringway": f"{version([str(TARGET / 'ringway'), '--version'])} ({commit})",
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "--version"]),
    }


def measure(proxy, url, conns, keepalive, rate, tmp, hgrm=None):
    """One ringway-load run; the proxy's CPU and peak RSS when there is one."""
    cpu0 = cpu_seconds(proxy.pid) if proxy else 0.0
    summary, cmd = load(url, conns, keepalive, rate, tmp, hgrm)
    cpu = cpu_seconds(proxy.pid) - cpu0 if proxy else None
    lat = summary["latency_ms"]
    lag = summary.get("schedule_lag_us") or {}
    row = {
        "rate": rate,
        "load_rps": summary["rps"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "p99_9_ms": lat["p99_9"],
        "errors": sum(summary["errors"].values()),
        "cpu_us_per_request": round(cpu * 1e6 / summary["requests"], 2) if cpu is not None and summary["requests"] else None,
        "peak_rss_mib": round(peak_rss_mib(proxy.pid), 1) if proxy else None,
    }
    if rate:
        row["lag_p99_us"] = lag.get("p99")
        row["lag_max_us"] = lag.get("max")
    return row, cmd


def show(row):
    print(f"{row['scenario']:<44} {row['proxy']:<8} "
          + " ".join(f"{k}={v}" for k, v in row.items() if k not in ("proxy", "scenario")), flush=True)


def closed_loop(tmp, origin_port, commands):
    results = []
    for scenario, path, conns, keepalive in SCENARIOS:
        for name in PROXIES:
            port = free_port()
            proxy = start(proxy_cmd(name, tmp, port, origin_port), port, name)
            url = f"http://127.0.0.1:{port}{path}"
            wrk(url, conns, keepalive, 1)  # warm-up: pools, caches, page faults
            row = {"proxy": name, "scenario": scenario, "connections": conns}
            row["wrk_rps"], cmd = wrk(url, conns, keepalive, SECONDS)
            commands[f"wrk/{scenario}"] = cmd.replace(str(port), "PORT")
            measured, cmd = measure(proxy, url, conns, keepalive, None, tmp)
            commands[f"ringway-load/{scenario}"] = cmd.replace(str(port), "PORT")
            row.update(measured)
            stop(proxy)
            results.append(row)
            show(row)
    return results


def added_latency(tmp, origin_port, capacity, commands):
    """Open loop at fractions of `capacity`, direct and through each proxy."""
    out = RESULTS / "added-latency"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.hgrm"):
        old.unlink()
    results = []
    for fraction in OPEN_LOOP_FRACTIONS:
        rate = int(capacity * fraction)
        scenario = f"open loop at {fraction:.0%} ({rate:,} req/s), {OPEN_LOOP_CONNECTIONS} conns"
        direct = None
        for name in ["direct"] + PROXIES:
            proxy = None
            port = origin_port
            if name != "direct":
                port = free_port()
                proxy = start(proxy_cmd(name, tmp, port, origin_port), port, name)
            url = f"http://127.0.0.1:{port}/"
            hgrm = out / f"{name}-{fraction * 100:.0f}.hgrm"
            row = {"proxy": name, "scenario": scenario, "connections": OPEN_LOOP_CONNECTIONS, "fraction": fraction}
            load(url, OPEN_LOOP_CONNECTIONS, True, rate, tmp, seconds=1)  # warm-up at the same rate
            measured, cmd = measure(proxy, url, OPEN_LOOP_CONNECTIONS, True, rate, tmp, hgrm)
            row.update(measured)
            commands[f"ringway-load/open loop {fraction:.0%}"] = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", cmd)
            if proxy:
                stop(proxy)
            if name == "direct":
                direct = row
            else:
                for p in ("p50", "p99", "p99_9"):
                    row[f"added_{p}_ms"] = round(row[f"{p}_ms"] - direct[f"{p}_ms"], 3)
            results.append(row)
            show(row)
    return results


def rss_kib(pid):
    return status_kib(pid, "VmRSS")


def one_request(sock):
    """Sends a GET on a keep-alive connection and reads its whole response."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed before a response")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"answered {head.splitlines()[0]!r}")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed mid-body")
        body += chunk


def raise_file_limit(want):
    """The soft open-file limit to the hard one, and both to `want` when
    allowed (root); the proxies started after inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            print(f"idle: open-file limit {hard} is below {want}, and may not be raised", file=sys.stderr)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def idle_memory(tmp, origin_port):
    """Per HTTP proxy: resident bytes per quiet keep-alive connection."""
    raise_file_limit(IDLE_CONNECTIONS + 4096)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(IDLE_CONNECTIONS, hard - 100)
    rows = []
    for name in HTTP_PROXIES:
        port = free_port()
        proxy = start(proxy_cmd(name, tmp, port, origin_port), port, name)
        for _ in range(16):  # warm: pools and first allocations
            with socket.create_connection(("127.0.0.1", port)) as s:
                one_request(s)
        time.sleep(3)
        before = rss_kib(proxy.pid)
        conns = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port))
                one_request(s)
                conns.append(s)
            # ringway gives a quiet connection's buffer back within two
            # seconds and its spare buffers by halves each second: steady
            # state is reached in about a dozen.
            time.sleep(15)
            after = rss_kib(proxy.pid)
            peak = status_kib(proxy.pid, "VmHWM")
        finally:
            for s in conns:
                s.close()
            stop(proxy)
        row = {"proxy": name, "connections": n, "rss_before_mib": before / 1024,
               "rss_after_mib": after / 1024, "peak_rss_mib": peak / 1024,
               "bytes_per_connection": (after - before) * 1024 / n}
        print(f"idle: {name:<8} {n} connections, RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB "
              f"(peak {peak / 1024:.1f}), {row['bytes_per_connection']:,.0f} bytes each")
        rows.append(row)
    return rows


def idle_markdown(rows):
    if not rows:
        return ""
    lines = [
        f"Idle keep-alive connections: {rows[0]['connections']:,} clients each send one request, then stay "
        "open and quiet; the proxy's resident memory (all its processes) before and 15 s after, and its peak "
        "(each process's VmHWM, summed):",
        "",
        "| proxy | connections | RSS before MiB | RSS after MiB | peak RSS MiB | bytes per connection |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak_rss_mib']:.1f}" if "peak_rss_mib" in r else "-"
        lines.append(f"| {r['proxy']} | {r['connections']:,} | {r['rss_before_mib']:.1f} | "
                     f"{r['rss_after_mib']:.1f} | {peak} | {r['bytes_per_connection']:,.0f} |")
    return "\n".join(lines) + "\n"


def main():
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    commands = {}
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="ringway-bench-") as tmp:
        tmp = Path(tmp)
        origin_port = free_port()
        origin = start([str(TARGET / "ringway-origin"), "--listen", f"127.0.0.1:{origin_port}",
                        "--threads", str(WORKERS)], origin_port, "ringway-origin")
        commands["origin"] = f"ringway-origin --listen 127.0.0.1:{origin_port} --threads {WORKERS}"
        results = closed_loop(tmp, origin_port, commands) if "closed" in PARTS else []
        maxima = [r["load_rps"] for r in results
                  if r["scenario"] == CAPACITY_SCENARIO and r["proxy"] in HTTP_PROXIES]
        added = []
        if maxima and "added" in PARTS:
            added = added_latency(tmp, origin_port, min(maxima), commands)
        elif "added" in PARTS:
            print(f"skipping added latency: no HTTP proxy ran '{CAPACITY_SCENARIO}'", file=sys.stderr)
        idle = idle_memory(tmp, origin_port) if "idle" in PARTS else []
        if "tls" in PARTS:
            tls.write(tls.part(sys.modules[__name__], tmp, origin_port, origin.pid), RESULTS)
            print(f"wrote {RESULTS / 'TLS.md'} and tls.json")
        stop(origin)
    if idle:
        (RESULTS / "idle.json").write_text(json.dumps(idle, indent=2) + "\n")
        (RESULTS / "IDLE.md").write_text(idle_markdown(idle))
    if not results:
        if idle:
            print(f"\nwrote {RESULTS / 'IDLE.md'}")
        elif "tls" not in PARTS:
            print("nothing measured")
        return
    info["total_seconds"] = round(time.time() - began)
    report = {"machine": info, "commands": commands, "results": results, "added_latency": added,
              "idle": idle}
    (RESULTS / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(info, results, added, commands) + ("\n" + idle_markdown(idle) if idle else "")
    (RESULTS / "RESULTS.md").write_text(table)
    if UPDATE_README:
        readme = ROOT / "README.md"
        text = readme.read_text()
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            readme.write_text(head + begin + "\n" + table + end + rest.split(end, 1)[1])
    print(f"\nwrote {RESULTS / 'RESULTS.md'} and results.json in {info['total_seconds']} s")


def markdown(info, results, added, commands):
    fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
    lines = [
        f"Measured with `bench/run.sh` on {info['cores']} cores ({info['cpu']}), Linux {info['kernel']}; "
        f"every proxy with {info['workers']} workers, {info['seconds_per_run']} s per run, "
        f"{info.get('total_seconds', 0) // 60} min {info.get('total_seconds', 0) % 60} s in all; "
        f"load generator, origin and proxy share the machine. "
        f"{info['ringway']}; {info['nginx']}; {info['haproxy'].split(' - ')[0]}; {info['wrk'].split(' Copyright')[0]}. "
        f"`relay` is HAProxy in `mode tcp`: a byte relay, one upstream connection per client connection.",
        "",
        "Closed loop:",
        "",
        "| scenario | proxy | wrk req/s | ringway-load req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/req | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['proxy']} | {fmt(r.get('wrk_rps'))} | {fmt(r['load_rps'])} | "
            f"{fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | {fmt(r['p99_9_ms'], 3)} | {r['errors']} | "
            f"{fmt(r['cpu_us_per_request'], 1)} | {fmt(r['peak_rss_mib'], 1)} |"
        )
    ratios = cpu_ratios(results)
    if ratios:
        lines += [
            "",
            "Proxy CPU per request, ringway against the best HTTP peer and against the TCP relay (lower is better):",
            "",
            "| scenario | ringway µs/req | best peer µs/req | relay µs/req | ringway ÷ best peer | ringway ÷ relay |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in ratios:
            lines.append(
                f"| {r['scenario']} | {fmt(r['ringway'], 1)} | {fmt(r['peer'], 1)} ({r['peer_name']}) | "
                f"{fmt(r['relay'], 1)} | {fmt(r['vs_peer'], 2)} | {fmt(r['vs_relay'], 2)} |"
            )
    if added:
        lines += [
            "",
            "Added latency: open loop at 25%, 50% and 75% of the slowest HTTP proxy's closed-loop maximum "
            f"({CAPACITY_SCENARIO}), straight to the origin (`direct`) and through each proxy; "
            "\"+\" columns are the figure minus the direct one at the same rate. "
            "Schedule lag is how late ringway-load sent its requests (p99 / max); latency counts from the intended send "
            "time, so the lag is part of every figure in its row.",
            "",
            "| rate | target | p50 ms | p99 ms | p99.9 ms | +p50 ms | +p99 ms | +p99.9 ms | schedule lag p99 / max µs | errors | proxy CPU µs/req |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in added:
            lines.append(
                f"| {r['fraction']:.0%} ({fmt(r['rate'])}/s) | {r['proxy']} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | "
                f"{fmt(r['p99_9_ms'], 3)} | {fmt(r.get('added_p50_ms'), 3)} | {fmt(r.get('added_p99_ms'), 3)} | "
                f"{fmt(r.get('added_p99_9_ms'), 3)} | {fmt(r.get('lag_p99_us'), 1)} / {fmt(r.get('lag_max_us'), 0)} | "
                f"{r['errors']} | {fmt(r['cpu_us_per_request'], 1)} |"
            )
        lines += ["", "Each run's distribution is in `bench/results/added-latency/TARGET-PERCENT.hgrm`; e.g. "
                  "`ringway-histo compare direct-50.hgrm ringway-50.hgrm nginx-50.hgrm haproxy-50.hgrm`."]
    lines += ["", "Commands (PORT is the proxy's, or the origin's for `direct`; the origin is `"
              + commands.get("origin", "") + "`):", ""]
    lines += [f"- `{c}`" for k, c in sorted(commands.items()) if k != "origin" and c]
    return "\n".join(lines) + "\n"


def cpu_ratios(results):
    """Per closed-loop scenario: ringway's CPU per request over the best peer's and the relay's."""
    rows = []
    for scenario, *_ in SCENARIOS:
        cpu = {r["proxy"]: r["cpu_us_per_request"] for r in results if r["scenario"] == scenario}
        if not cpu.get("ringway"):
            continue
        peers = {p: v for p, v in cpu.items() if p not in ("ringway", "relay") and v}
        peer_name = min(peers, key=peers.get) if peers else None
        peer, relay = peers.get(peer_name), cpu.get("relay")
        rows.append({
            "scenario": scenario,
            "ringway": cpu["ringway"],
            "peer": peer,
            "peer_name": peer_name or "-",
            "relay": relay,
            "vs_peer": cpu["ringway"] / peer if peer else None,
            "vs_relay": cpu["ringway"] / relay if relay else None,
        })
    return rows


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in list(started):
            stop(p)
