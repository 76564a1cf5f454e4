#!/usr/bin/env bash
# A/B of ringway's CPU per request: alternates builds or settings on one
# machine, so the comparison shares its noise.
#
#   bench/ab.sh CONNS SECONDS REPS VARIANT...
#   bench/ab.sh 8 5 3 RINGWAY_URING=plain RINGWAY_URING=coop
#   bench/ab.sh 8 5 3 RW=/tmp/before/ringway RW=target/release/ringway
#   bench/ab.sh 64 5 5 CONF=plain CONF=ratelimit
#
# A variant is a list of environment assignments for the proxy; RW names
# the ringway binary (default target/release/ringway), CONF one of the
# configs below (default plain): plain, ratelimit (a per-client and a
# global limit that never trigger), accesslog (every request logged),
# retry (the route retries 5xx and resets, its responses held until whole,
# none ever failing), and round-robin, least-conn, p2c, hash-client-ip
# (that balance over two endpoints, a second origin). One shard, pinned by
# taskset to CPU 1; ringway-origin and ringway-load (closed loop, one
# thread) on CPU 0. Prints the proxy's own CPU time (all its threads, from
# /proc/PID/task/*/schedstat) divided by the requests ringway-load completed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n 2,15p "$0"; exit 2; }
conns=$1 secs=$2 reps=$3
shift 3
bin=target/release
[ -x $bin/ringway-load ] && [ -x $bin/ringway-origin ] ||
    cargo build --release -q -p ringway -p ringway-load -p ringway-origin
work=$(mktemp -d)
trap 'kill ${origin:-} ${origin2:-} 2>/dev/null; rm -rf "$work"' EXIT
cat >"$work/ab.toml" <<EOF
[server]
workers = 1
pin_cores = false
[[listener]]
name = "main"
bind = "127.0.0.1:19000"
[[upstream]]
name = "o"
endpoints = ["127.0.0.1:19001"]
[[route]]
name = "all"
prefix = "/"
upstream = "o"
EOF
cp "$work/ab.toml" "$work/ab-plain.toml"
cat "$work/ab.toml" - >"$work/ab-ratelimit.toml" <<EOF
[rate_limit]
per_client = { rate = 1e9, burst = 1000000 }
global = { rate = 1e9, burst = 1000000 }
EOF
cat "$work/ab.toml" - >"$work/ab-accesslog.toml" <<EOF
[access_log]
path = "$work/access.log"
EOF
# Retries on and never triggered: every response held until whole.
cat "$work/ab.toml" - >"$work/ab-retry.toml" <<EOF
retry = { attempts = 3 }
EOF
# Each balance over two endpoints (the second origin below).
for balance in round-robin least-conn p2c hash-client-ip; do
    sed -e 's/^endpoints = .*/endpoints = ["127.0.0.1:19001", "127.0.0.1:19002"]/' \
        -e "s/^name = \"o\"/name = \"o\"\nbalance = \"$balance\"/" \
        "$work/ab.toml" >"$work/ab-$balance.toml"
done
taskset -c 0 $bin/ringway-origin --listen 127.0.0.1:19001 --threads 1 >/dev/null 2>&1 &
origin=$!
taskset -c 0 $bin/ringway-origin --listen 127.0.0.1:19002 --threads 1 >/dev/null 2>&1 &
origin2=$!

cpu_ns() {
    local total=0 run _
    for f in /proc/"$1"/task/*/schedstat; do
        read -r run _ <"$f"
        total=$((total + run))
    done
    echo $total
}

for rep in $(seq "$reps"); do
    for v in "$@"; do
        (
            export $v RUST_LOG=warn
            exec taskset -c 1 "${RW:-$bin/ringway}" --config "$work/ab-${CONF:-plain}.toml" >/dev/null 2>&1
        ) &
        proxy=$!
        for _ in $(seq 100); do
            (exec 3<>/dev/tcp/127.0.0.1/19000) 2>/dev/null && break
            sleep 0.05
        done
        load() { taskset -c 0 $bin/ringway-load http://127.0.0.1:19000/ -c "$conns" -t 1 -w 0s "$@"; }
        load -d 1s >/dev/null 2>&1
        before=$(cpu_ns $proxy)
        load -d "${secs}s" --json "$work/run.json" >/dev/null 2>&1
        after=$(cpu_ns $proxy)
        kill $proxy
        wait $proxy 2>/dev/null || true
        python3 - "$work/run.json" "$before" "$after" "$v" "$conns" "$rep" <<'PY'
import json, sys
path, before, after, variant, conns, rep = sys.argv[1:]
n = json.load(open(path))["requests"]
us = (int(after) - int(before)) / 1000 / n
print(f"{variant:<40} conns {conns:>4} run {rep}  {n:>8} requests  {us:6.2f} CPU µs/request")
PY
    done
done
