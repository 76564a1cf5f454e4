#!/usr/bin/env bash
# Checks the Debian package; with --install (as root) installs it, runs the
# proxy the way the unit does, and purges it again.
#
#   bash dist/test-deb.sh                          # build (cargo build --release), then check
#   bash dist/test-deb.sh --release-dir DIR        # package the binaries in DIR, then check
#   bash dist/test-deb.sh target/deb/ringway_0.1.0_amd64.deb   # check this package
#   bash dist/test-deb.sh --install [...]          # and install, serve, upgrade, purge (root)
#
# The check (no root, nothing installed): the file list with owners and
# modes, the control fields, the conffiles, the maintainer scripts, and the
# packaged config validated by the packaged binary.
# --install: refuses when a ringway package is installed or 127.0.0.1:8080
# or :9091 is taken. It installs with dpkg -i, starts /usr/bin/ringway
# --config /etc/ringway/ringway.toml as the ringway user (setpriv; no
# systemd needed), with a NOTIFY_SOCKET of its own when python3 is there,
# and checks: the response on 127.0.0.1:8080, ctl status and reload, the
# access log, a logrotate run (when logrotate is installed), a binary
# upgrade (ringway --upgrade), SIGTERM; then dpkg --purge, and removes the
# ringway user if this script's install created it. Every process it starts
# is stopped on exit, also on failure.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

install=0
deb=""
build_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --install) install=1; shift ;;
        --release-dir) build_args+=(--release-dir "${2:?--release-dir needs a directory}"); shift 2 ;;
        --compress) build_args+=(--compress "${2:?--compress needs a type}"); shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "test-deb.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) deb=$1; shift ;;
    esac
done

fails=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...: ok if the command succeeds
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

x=$(mktemp -d "${TMPDIR:-/tmp}/ringway-test-deb.XXXXXX")
pids=()
installed_here=0
user_made_here=0
cleanup() {
    local p
    for p in ${pids[@]+"${pids[@]}"}; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in ${pids[@]+"${pids[@]}"}; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ "$installed_here" = 1 ] && dpkg-query -W ringway >/dev/null 2>&1; then
        dpkg --purge ringway >/dev/null 2>&1 || true
    fi
    if [ "$user_made_here" = 1 ] && getent passwd ringway >/dev/null; then
        userdel ringway 2>/dev/null || true
        groupdel ringway 2>/dev/null || true
    fi
    rm -rf "$x"
}
trap cleanup EXIT

if [ -z "$deb" ]; then
    start=$(date +%s)
    # Into the temporary directory: a package built for a check (maybe of
    # debug binaries) must not pass for the real one in target/deb.
    deb=$(bash dist/build-deb.sh --out "$x/deb" ${build_args[@]+"${build_args[@]}"} | tail -n 1)
    echo "built $deb in $(( $(date +%s) - start )) s"
fi
[ -f "$deb" ] || { echo "test-deb.sh: no package at $deb" >&2; exit 1; }

version=$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)

echo "== $deb: contents"
# Regular files: mode owner/group path. Directories are not listed.
listing=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { print $1, $2, $6 }' | sed 's| \./| /|' | sort -k3)
expected=$(sort -k3 <<'EOF'
-rwxr-xr-x root/root /usr/bin/ringway
-rwxr-xr-x root/root /usr/bin/ringway-load
-rwxr-xr-x root/root /usr/bin/ringway-histo
-rwxr-xr-x root/root /usr/bin/ringway-origin
-rw-r--r-- root/root /etc/ringway/ringway.toml
-rw-r--r-- root/root /etc/logrotate.d/ringway
-rw-r--r-- root/root /lib/systemd/system/ringway.service
-rw-r--r-- root/root /usr/share/doc/ringway/copyright
-rw-r--r-- root/root /usr/share/doc/ringway/README.md.gz
-rw-r--r-- root/root /usr/share/doc/ringway/deploy.md.gz
-rw-r--r-- root/root /usr/share/doc/ringway/examples/ringway.toml
-rw-r--r-- root/root /usr/share/doc/ringway/examples/gateway.toml
EOF
)
if [ "$listing" = "$expected" ]; then
    ok "file list, modes and owners ($(wc -l <<<"$listing") files)"
else
    fail "file list, modes and owners differ (- expected, + in the package):"
    diff <(echo "$expected") <(echo "$listing") | grep '^[<>]' | sed 's/^</  -/; s/^>/  +/' || true
fi
dirs_not_root=$(dpkg-deb -c "$deb" | awk '$1 ~ /^d/ && $2 != "root/root"')
check "directories owned by root" test -z "$dirs_not_root"

echo "== control"
field() { dpkg-deb -f "$deb" "$1"; }
check "Package: ringway" test "$(field Package)" = ringway
check "Version: $version (Cargo.toml)" test "$(field Version)" = "$version"
check "Architecture: $arch" test "$(field Architecture)" = "$arch"
check "Depends names libc6 and adduser: $(field Depends)" \
    bash -c '[[ "$1" == *libc6* && "$1" == *adduser* ]]' _ "$(field Depends)"
conffiles=$(dpkg-deb -I "$deb" conffiles | sort)
check "conffiles: /etc/ringway/ringway.toml and /etc/logrotate.d/ringway" \
    test "$conffiles" = "$(printf '%s\n' /etc/logrotate.d/ringway /etc/ringway/ringway.toml)"
info=$(dpkg-deb -I "$deb")
for s in postinst prerm postrm; do
    check "$s is there, executable, a shell script with set -e" \
        bash -c 'grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$1 +#!/bin/sh" <<<"$2" &&
                 dpkg-deb -I "$3" "$1" | grep -qx "set -e"' _ "$s" "$info" "$deb"
done

echo "== files"
dpkg-deb -x "$deb" "$x/root"
conf="$x/root/etc/ringway/ringway.toml"
check "packaged ringway checks the packaged config" \
    bash -c '"$1/root/usr/bin/ringway" --config "$2" check >"$1/check.out" 2>&1' _ "$x" "$conf"
check "admin_socket = \"/run/ringway/admin.sock\"" \
    grep -Eq '^admin_socket = "/run/ringway/admin\.sock"' "$conf"
metrics_listen() { sed -n '/^\[metrics\]/,/^\[/{s/^listen *= *"\([^"]*\)".*/\1/p}' "$1"; }
check "[metrics] listen as in conf/ringway.toml ($(metrics_listen conf/ringway.toml))" \
    test "$(metrics_listen "$conf")" = "$(metrics_listen conf/ringway.toml)"
check "listener on 127.0.0.1:8080" grep -Eq '^bind = "127\.0\.0\.1:8080"' "$conf"
unit="$x/root/lib/systemd/system/ringway.service"
for line in "Type=notify" "NotifyAccess=all" "User=ringway" \
    "ExecStartPre=/usr/bin/ringway --config /etc/ringway/ringway.toml check" \
    "ExecStart=/usr/bin/ringway --config /etc/ringway/ringway.toml" \
    "ExecReload=/usr/bin/ringway --config /etc/ringway/ringway.toml ctl reload" \
    "RuntimeDirectory=ringway" "LogsDirectory=ringway" "MemoryDenyWriteExecute=yes"; do
    check "unit: $line" grep -qxF "$line" "$unit"
done
check "logrotate: postrotate runs ctl reopen-logs" \
    grep -qF '/usr/bin/ringway --config /etc/ringway/ringway.toml ctl reopen-logs >/dev/null 2>&1 || true' \
    "$x/root/etc/logrotate.d/ringway"
for s in postinst prerm postrm; do
    dpkg-deb -I "$deb" "$s" > "$x/$s"
    check "$s parses (sh -n)" sh -n "$x/$s"
done

if [ "$install" = 0 ]; then
    [ "$fails" = 0 ] || { echo "$fails check(s) failed"; exit 1; }
    echo "all checks passed (no install: run with --install as root for that)"
    exit 0
fi

echo "== install"
[ "$(id -u)" = 0 ] || { echo "test-deb.sh: --install needs root" >&2; exit 1; }
if dpkg-query -W -f='${Status}' ringway 2>/dev/null | grep -q installed; then
    echo "test-deb.sh: a ringway package is installed already; not touching it" >&2
    exit 1
fi
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8080 9091; do
    if port_taken "$port"; then
        echo "test-deb.sh: 127.0.0.1:$port is taken; the packaged config needs it" >&2
        exit 1
    fi
done
getent passwd ringway >/dev/null || user_made_here=1
installed_here=1
dpkg -i "$deb"
check "ringway user and group exist" bash -c 'getent passwd ringway >/dev/null && getent group ringway >/dev/null'
check "/var/log/ringway: ringway:ringway 750" test "$(stat -c '%U:%G %a' /var/log/ringway)" = "ringway:ringway 750"
check "dpkg knows the conffiles" \
    bash -c '[ "$(dpkg-query -W -f="\${Conffiles}\n" ringway | grep -c "^ /etc/")" = 2 ]'
check "ringway --version runs" bash -c '/usr/bin/ringway --version | grep -q "^ringway "'
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify ringway.service" systemd-analyze verify /lib/systemd/system/ringway.service
fi

# What systemd would do before ExecStart: the RuntimeDirectory.
install -d -o ringway -g ringway -m 0750 /run/ringway
as_ringway() { setpriv --reuid=ringway --regid=ringway --init-groups --no-new-privs "$@"; }
ctl() { as_ringway /usr/bin/ringway --config /etc/ringway/ringway.toml ctl "$@"; }
check "ExecStartPre: ringway check, as ringway" \
    bash -c "$(declare -f as_ringway); cd / && as_ringway /usr/bin/ringway --config /etc/ringway/ringway.toml check >/dev/null"

# A NOTIFY_SOCKET of our own, as systemd gives a Type=notify service.
notify_log="$x/notify.log"
if command -v python3 >/dev/null 2>&1; then
    install -d -m 0711 "$x/notify"
    python3 - "$x/notify/sock" "$notify_log" <<'EOF' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        log.write(s.recv(4096).decode().replace("\n", " ") + "\n")
EOF
    pids+=($!)
    for _ in $(seq 50); do [ -S "$x/notify/sock" ] && break; sleep 0.1; done
    export NOTIFY_SOCKET="$x/notify/sock"
fi
chmod 0711 "$x"

(cd / && exec setpriv --reuid=ringway --regid=ringway --init-groups --no-new-privs \
    /usr/bin/ringway --config /etc/ringway/ringway.toml >"$x/ringway.log" 2>&1) &
old=$!
pids+=("$old")
wait_http() {
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:8080/" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
check "listening on 127.0.0.1:8080 within 10 s" wait_http
body=$(curl -sS -w ' %{http_code}' "http://127.0.0.1:8080/" || true)
echo "     curl http://127.0.0.1:8080/ -> $body"
check "GET / answers 200 {\"service\":\"ringway\",\"status\":\"ok\"}" \
    test "$body" = '{"service":"ringway","status":"ok"} 200'
check "the process runs as ringway" test "$(ps -o user= -p "$old" | tr -d ' ')" = ringway
check "admin socket /run/ringway/admin.sock, ringway 600" \
    test "$(stat -c '%U %a %F' /run/ringway/admin.sock)" = "ringway 600 socket"
check "ctl status (as ringway)" bash -c "$(declare -f as_ringway ctl); ctl status | grep -q '^listener main on 127.0.0.1:8080'"
check "ctl reload (ExecReload, as ringway)" bash -c "$(declare -f as_ringway ctl); ctl reload | grep -q '^reloaded: generation 1'"
check "metrics on 127.0.0.1:9091" bash -c 'curl -fsS http://127.0.0.1:9091/metrics | grep -q "^ringway_"'
for _ in $(seq 30); do [ -s /var/log/ringway/access.log ] && break; sleep 0.1; done
check "access log /var/log/ringway/access.log written, ringway:ringway 640" \
    bash -c '[ -s /var/log/ringway/access.log ] && [ "$(stat -c "%U:%G %a" /var/log/ringway/access.log)" = "ringway:ringway 640" ]'

if command -v logrotate >/dev/null 2>&1; then
    logrotate -s "$x/logrotate.state" -f /etc/logrotate.d/ringway
    curl -fsS -o /dev/null "http://127.0.0.1:8080/after-rotate" || true
    for _ in $(seq 30); do grep -q after-rotate /var/log/ringway/access.log 2>/dev/null && break; sleep 0.1; done
    check "logrotate -f: access.log.1 kept, the next request in a new access.log" \
        bash -c '[ -s /var/log/ringway/access.log.1 ] && ! grep -q after-rotate /var/log/ringway/access.log.1 &&
                 grep -q after-rotate /var/log/ringway/access.log'
else
    echo "skip logrotate run: logrotate is not installed"
fi

# Binary upgrade: a new process takes the listening sockets over the admin
# socket; the old one drains and exits 0.
(cd / && exec setpriv --reuid=ringway --regid=ringway --init-groups --no-new-privs \
    /usr/bin/ringway --config /etc/ringway/ringway.toml --upgrade >"$x/upgrade.log" 2>&1) &
new=$!
pids+=("$new")
old_exited() {
    for _ in $(seq 200); do kill -0 "$old" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}
check "upgrade: the old process exits within 20 s" old_exited
if wait "$old"; then ok "upgrade: the old process exited 0"; else fail "upgrade: the old process exited $?"; fi
check "upgrade: the new process serves" wait_http
check "upgrade: ctl status answers from the new pid" \
    bash -c "$(declare -f as_ringway ctl); ctl status | grep -q ' pid $new '"

kill -TERM "$new"
if wait "$new"; then ok "SIGTERM: exit 0"; else fail "SIGTERM: exit $?"; fi
check "SIGTERM: admin socket removed" test ! -e /run/ringway/admin.sock
if [ -n "${NOTIFY_SOCKET:-}" ]; then
    echo "     notify messages: $(cut -c1-40 "$notify_log" | tr '\n' '|')"
    check "notify: READY=1, RELOADING=1, MAINPID=$new, STOPPING=1" \
        bash -c 'grep -q "^READY=1" "$1" && grep -q "^RELOADING=1" "$1" &&
                 grep -qx "MAINPID=$2 *" "$1" && grep -q "^STOPPING=1" "$1"' _ "$notify_log" "$new"
fi

echo "== purge"
dpkg --purge ringway
installed_here=0
check "purged: binaries, /etc/ringway, the unit, /var/log/ringway are gone" \
    bash -c '! [ -e /usr/bin/ringway ] && ! [ -e /etc/ringway ] && ! [ -e /lib/systemd/system/ringway.service ] && ! [ -e /var/log/ringway ]'
if [ "$user_made_here" = 1 ]; then
    userdel ringway && { groupdel ringway 2>/dev/null || true; }
    user_made_here=0
    echo "     removed the ringway user this test created (the package leaves it)"
fi

[ "$fails" = 0 ] || { echo "$fails check(s) failed"; echo "--- ringway log:"; cat "$x/ringway.log" "$x/upgrade.log" 2>/dev/null | tail -n 40; exit 1; }
echo "all checks passed"
