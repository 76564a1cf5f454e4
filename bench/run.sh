#!/usr/bin/env bash
# End-to-end benchmark: ringway, nginx and HAProxy as keep-alive reverse
# proxies in front of the same origin, and HAProxy in TCP mode as a byte
# relay, driven by wrk and ringway-load: closed loop, then the latency each
# adds over the origin alone at fixed open-loop rates, then idle memory
# (bench/bench.py says what is measured); TLS on request (BENCH_PARTS=tls,
# bench/tls.py). Installs what it needs (nginx, haproxy, wrk, python3,
# openssl) from Debian when missing, builds the release binaries (into
# $CARGO_TARGET_DIR when set) and writes bench/results/. About 8 minutes on
# 2 cores with the defaults, 3 for the TLS part.
#
#   bench/run.sh                          # every proxy, every scenario, 5 s each
#   BENCH_SECONDS=10 bench/run.sh         # longer runs
#   BENCH_PROXIES=ringway,nginx bench/run.sh
#   BENCH_README=1 bench/run.sh           # also rewrite the README's table
#   BENCH_PARTS=tls bench/run.sh          # TLS termination alone
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench/run.sh: missing ${need[*]}; run as root so they can be installed" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p ringway -p ringway-origin -p ringway-load
exec python3 bench/bench.py "$@"
