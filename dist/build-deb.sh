#!/usr/bin/env bash
# Builds the Debian package of ringway: target/deb/ringway_<version>_<arch>.deb
#
#   bash dist/build-deb.sh                     # cargo build --release, then package
#   bash dist/build-deb.sh --release-dir DIR   # package the binaries already in DIR, no build
#
# One package holds the proxy (/usr/bin/ringway) and its tools (ringway-load,
# ringway-histo, ringway-origin). Options:
#   --release-dir DIR   take the four binaries from DIR (e.g. target/release)
#                       instead of running cargo; fails if one is missing
#   --out DIR           write the .deb there (default target/deb)
#   --compress TYPE     dpkg-deb compression: xz (default), gzip, zstd, none
# Environment: DEB_MAINTAINER overrides the Maintainer field.
# Needs dpkg-deb (dpkg); uses dpkg-shlibdeps (dpkg-dev) when present to
# compute Depends, else a fixed list. Prints the path of the .deb last.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

release_dir=""
out_dir="target/deb"
compress="xz"
while [ $# -gt 0 ]; do
    case "$1" in
        --release-dir) release_dir=${2:?--release-dir needs a directory}; shift 2 ;;
        --out) out_dir=${2:?--out needs a directory}; shift 2 ;;
        --compress) compress=${2:?--compress needs a type}; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

bins="ringway ringway-load ringway-histo ringway-origin"

# The version is the root package's, [package] version in Cargo.toml (the
# first version line of that section; tools/* have their own).
version=$(sed -n '/^\[package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "build-deb.sh: no [package] version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)

if [ -z "$release_dir" ]; then
    release_dir="${CARGO_TARGET_DIR:-target}/release"
    echo "build-deb.sh: cargo build --release ($bins)" >&2
    cargo build --release --locked $(printf -- '-p %s ' $bins)
fi
for b in $bins; do
    [ -x "$release_dir/$b" ] || { echo "build-deb.sh: $release_dir/$b is missing (build it, or drop --release-dir)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ringway-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants the files under debian/<package>/ and a debian/control.
root="$work/debian/ringway"
umask 022
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/etc/ringway" "$root/etc/logrotate.d" \
    "$root/lib/systemd/system" "$root/usr/share/doc/ringway/examples"

for b in $bins; do
    install -m 0755 "$release_dir/$b" "$root/usr/bin/$b"
done
install -m 0644 dist/ringway.toml "$root/etc/ringway/ringway.toml"
install -m 0644 dist/logrotate "$root/etc/logrotate.d/ringway"
install -m 0644 dist/ringway.service "$root/lib/systemd/system/ringway.service"

doc="$root/usr/share/doc/ringway"
install -m 0644 dist/copyright "$doc/copyright"
gzip -9n < README.md > "$doc/README.md.gz"
gzip -9n < docs/deploy.md > "$doc/deploy.md.gz"
install -m 0644 conf/ringway.toml "$doc/examples/ringway.toml"
install -m 0644 conf/gateway.toml "$doc/examples/gateway.toml"
chmod 0644 "$doc"/*.gz

for s in postinst prerm postrm; do
    install -m 0755 "dist/debian/$s" "$root/DEBIAN/$s"
done
# dpkg keeps a changed conffile across upgrades and asks before replacing it.
printf '%s\n' /etc/ringway/ringway.toml /etc/logrotate.d/ringway > "$root/DEBIAN/conffiles"

depends="libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
    printf 'Source: ringway\n\nPackage: ringway\nArchitecture: any\n' > "$work/debian/control"
    if shlibs=$(cd "$work" && dpkg-shlibdeps -O $(printf 'debian/ringway/usr/bin/%s ' $bins) 2>/dev/null); then
        depends=${shlibs#shlibs:Depends=}
    fi
    rm -f "$work/debian/control"
fi
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)

cat > "$root/DEBIAN/control" <<EOF
Package: ringway
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-ringway maintainers <ringway@localhost>}
Installed-Size: $installed_size
Depends: $depends, adduser
Suggests: logrotate
Section: httpd
Priority: optional
Description: HTTP/1.1 edge reverse proxy on a thread-per-core io_uring runtime
 ringway forwards HTTP/1.1 to pools of upstream servers, one io_uring event
 loop per core, with reload, rate limits, Prometheus metrics, an access log
 and zero-downtime binary upgrades (ringway --upgrade).
 .
 This package also holds the tools: ringway-load (load generator),
 ringway-histo (HdrHistogram reader and plotter) and ringway-origin (test
 origin server). The service (ringway.service) is installed but not enabled
 or started: systemctl enable --now ringway.
EOF

mkdir -p "$out_dir"
deb="$out_dir/ringway_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Z"$compress" "$root" "$deb" >&2
echo "$deb"
