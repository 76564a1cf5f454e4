#!/usr/bin/env python3
"""ringway vs nginx vs HAProxy: the same origin, the same worker count, the
same load. Run through bench/run.sh, which installs and builds what this needs.

For every scenario each proxy is started afresh (so peak RSS is the
scenario's), warmed with wrk for a second, then measured:
  - wrk, closed loop: requests/s;
  - ringway-load, closed loop (or open loop at a fixed rate): requests/s and
    p50/p99/p99.9 latency, and over that run the proxy's own CPU time
    (utime+stime of all its processes, from /proc) divided by the requests
    it completed: the figure that stays stable on a shared machine.
Every process started here is stopped here, also on error or Ctrl-C.
"""

import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET = ROOT / "target" / "release"
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
WORKERS = int(os.environ.get("BENCH_WORKERS", str(os.cpu_count() or 2)))
PROXIES = os.environ.get("BENCH_PROXIES", "ringway,nginx,haproxy").split(",")
TICK = os.sysconf("SC_CLK_TCK")

# name, path, connections, keep-alive, open-loop rate as a fraction of ringway's capacity
SCENARIOS = [
    ("small keep-alive, 64 conns", "/", 64, True, None),
    ("small keep-alive, 256 conns", "/", 256, True, None),
    ("16 KiB response, 64 conns", "/?size=16384", 64, True, None),
    ("new connection per request, 64 conns", "/", 64, False, None),
    ("constant rate at 50% of ringway's capacity", "/", 64, True, 0.5),
]

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


def peak_rss_mib(pid):
    kib = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib += int(line.split()[1])
        except OSError:
            pass
    return kib / 1024


def proxy_cmd(name, tmp, port, origin):
    if name == "ringway":
        conf = tmp / "ringway.toml"
        conf.write_text(f"""[server]
workers = {WORKERS}
pin_cores = true
[[listener]]
name = "bench"
bind = "127.0.0.1:{port}"
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
        conf = tmp / "nginx.conf"
        conf.write_text(f"""worker_processes {WORKERS};
worker_cpu_affinity auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
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
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
""")
        return ["nginx", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    if name == "haproxy":
        conf = tmp / "haproxy.cfg"
        conf.write_text(f"""global
    nbthread {WORKERS}
    cpu-map auto:1/1-{WORKERS} 0-{WORKERS - 1}
    maxconn 8000
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
    bind 127.0.0.1:{port}
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


def load(url, conns, keepalive, rate, tmp):
    out = tmp / "load.json"
    cmd = [str(TARGET / "ringway-load"), url, "-c", str(conns), "-t", str(WORKERS), "-d", f"{SECONDS}s",
           "-w", "0s", "--json", str(out)]
    if not keepalive:
        cmd.append("--no-keepalive")
    if rate:
        cmd += ["-R", str(int(rate))]
    run(cmd)
    shown = " ".join(["ringway-load" if c == cmd[0] else c for c in cmd if c != str(out)]).replace(" --json", "")
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


def main():
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    results = []
    commands = {}
    ringway_capacity = None
    with tempfile.TemporaryDirectory(prefix="ringway-bench-") as tmp:
        tmp = Path(tmp)
        origin_port = free_port()
        origin = start([str(TARGET / "ringway-origin"), "--listen", f"127.0.0.1:{origin_port}",
                        "--threads", str(WORKERS)], origin_port, "ringway-origin")
        commands["origin"] = f"ringway-origin --listen 127.0.0.1:{origin_port} --threads {WORKERS}"
        for scenario, path, conns, keepalive, fraction in SCENARIOS:
            rate = None
            if fraction is not None:
                if ringway_capacity is None:
                    print(f"skipping '{scenario}': ringway's capacity was not measured", file=sys.stderr)
                    continue
                rate = ringway_capacity * fraction
            for name in PROXIES:
                port = free_port()
                proxy = start(proxy_cmd(name, tmp, port, origin_port), port, name)
                url = f"http://127.0.0.1:{port}{path}"
                wrk(url, conns, keepalive, 1)  # warm-up: pools, caches, page faults
                row = {"proxy": name, "scenario": scenario, "connections": conns}
                if rate is None:
                    row["wrk_rps"], cmd = wrk(url, conns, keepalive, SECONDS)
                    commands[f"wrk/{scenario}"] = cmd.replace(str(port), "PORT")
                cpu0 = cpu_seconds(proxy.pid)
                summary, cmd = load(url, conns, keepalive, rate, tmp)
                cpu = cpu_seconds(proxy.pid) - cpu0
                commands[f"ringway-load/{scenario}"] = cmd.replace(str(port), "PORT")
                lat = summary["latency_ms"]
                errors = sum(summary["errors"].values())
                row.update({
                    "rate": rate,
                    "load_rps": summary["rps"],
                    "p50_ms": lat["p50"],
                    "p99_ms": lat["p99"],
                    "p99_9_ms": lat["p99_9"],
                    "errors": errors,
                    "cpu_us_per_request": round(cpu * 1e6 / summary["requests"], 2) if summary["requests"] else None,
                    "peak_rss_mib": round(peak_rss_mib(proxy.pid), 1),
                })
                if name == "ringway" and scenario == SCENARIOS[0][0]:
                    ringway_capacity = summary["rps"]
                stop(proxy)
                results.append(row)
                print(f"{scenario:<44} {name:<8} " + " ".join(f"{k}={v}" for k, v in row.items() if k not in ("proxy", "scenario")), flush=True)
        stop(origin)
    report = {"machine": info, "commands": commands, "results": results}
    (RESULTS / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(info, results, commands)
    (RESULTS / "RESULTS.md").write_text(table)
    readme = ROOT / "README.md"
    text = readme.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        readme.write_text(head + begin + "\n" + table + end + rest.split(end, 1)[1])
    print(f"\nwrote {RESULTS / 'RESULTS.md'} and results.json")


def markdown(info, results, commands):
    fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
    lines = [
        f"Measured with `bench/run.sh` on {info['cores']} cores ({info['cpu']}), Linux {info['kernel']}; "
        f"every proxy with {info['workers']} workers, {info['seconds_per_run']} s per run; "
        f"load generator, origin and proxy share the machine. "
        f"{info['ringway']}; {info['nginx']}; {info['haproxy'].split(' - ')[0]}; {info['wrk'].split(' Copyright')[0]}.",
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
    lines += ["", "Commands (PORT is the proxy's; the origin is `" + commands.get("origin", "") + "`):", ""]
    lines += [f"- `{c}`" for k, c in sorted(commands.items()) if k != "origin" and c]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in list(started):
            stop(p)
