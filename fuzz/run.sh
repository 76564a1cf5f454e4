#!/usr/bin/env bash
# Builds the fuzz targets on the stable toolchain and runs each for SECONDS.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 60 s, every target)
#
# Coverage comes from LLVM's SanitizerCoverage passes, asked for in RUSTFLAGS;
# the explicit --target keeps those flags off build scripts and proc-macros.
# No ASan (that is nightly-only): debug assertions and overflow checks are on
# (fuzz/Cargo.toml), and any panic is a crash.
#
# Per target: inputs that crashed before (fuzz/regressions/TARGET) are run
# first; then libFuzzer grows fuzz/corpus/TARGET (not committed) from the
# committed seeds in fuzz/seeds/TARGET, and writes crash inputs and its log
# to fuzz/artifacts/TARGET. Exits 1 if any target crashed, naming the input.
#
# Environment: FUZZ_JOBS=N runs N fuzzing processes per target (default 1);
# FUZZ_ARGS adds libFuzzer flags (e.g. FUZZ_ARGS=-use_value_profile=1).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds="${1:-60}"
[ "$#" -gt 0 ] && shift
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
all=()
for f in fuzz_targets/*.rs; do
    all+=("$(basename "$f" .rs)")
done
targets=("$@")
[ "${#targets[@]}" -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
    if [ ! -f "fuzz_targets/$t.rs" ]; then
        echo "fuzz/run.sh: no target '$t' (have: ${all[*]})" >&2
        exit 2
    fi
done

# libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
if ! command -v "${CXX:-c++}" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz/run.sh: needs a C++ compiler (apt-get install g++)" >&2
        exit 2
    fi
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    --cfg fuzzing
)
case "$triple" in
*-linux-*) flags+=(-Cllvm-args=-sanitizer-coverage-stack-depth) ;;
esac
bins=()
for t in "${targets[@]}"; do
    bins+=(--bin "$t")
done
echo "fuzz: building ${targets[*]} for $triple"
RUSTFLAGS="${flags[*]} ${RUSTFLAGS:-}" cargo build --release --quiet \
    --target "$triple" --target-dir "$here/target" "${bins[@]}"

# The panic message (the backtrace stays in the log), then libFuzzer's summary.
show_crash() {
    sed -n '/panicked at/,/^stack backtrace:/p' "$1" | grep -v '^stack backtrace:' | head -n 40
    grep -E '^(==[0-9]+== ERROR|SUMMARY|MS:|Base64:)' "$1" || true
}

failed=()
for t in "${targets[@]}"; do
    bin="$here/target/$triple/release/$t"
    corpus="$here/corpus/$t"
    seeds="$here/seeds/$t"
    artifacts="$here/artifacts/$t"
    log="$artifacts/fuzz.log"
    mkdir -p "$corpus" "$artifacts"

    case "$t" in
    chunked_body) max_len=20000 dict=chunked.dict ;; # past the 16 KiB trailer bound
    policy_rewrite) max_len=8192 dict=policy.dict ;;  # http.dict and the policies' names
    *) max_len=8192 dict=http.dict ;;                # past the 4 KiB head bound
    esac

    # Each old crash input once: libFuzzer runs the files it is given.
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        if ! RUST_BACKTRACE=1 "$bin" "$here/regressions/$t"/* >"$artifacts/regressions.log" 2>&1; then
            input="$(sed -n 's/^Running: //p' "$artifacts/regressions.log" | tail -1)"
            show_crash "$artifacts/regressions.log"
            echo "fuzz: $t: FAILED on an old crash input: ${input:-see $artifacts/regressions.log}"
            failed+=("$t")
            continue
        fi
        echo "fuzz: $t: $(ls "regressions/$t" | wc -l) regression input(s) pass"
    fi

    dirs=("$corpus")
    [ -d "$seeds" ] && dirs+=("$seeds")
    jobs=()
    [ "${FUZZ_JOBS:-1}" -gt 1 ] && jobs=(-fork="$FUZZ_JOBS")
    echo "fuzz: $t: ${seconds}s, corpus $corpus"
    status=0
    # SIGINT ends libFuzzer cleanly should -max_total_time be overrun.
    RUST_BACKTRACE=1 timeout -s INT -k 30 $((seconds + 120)) "$bin" \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=2048 -dict="$here/dict/$dict" \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        "${jobs[@]}" ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1 || status=$?
    {
        grep -E '^INFO: Loaded [0-9]+ modules' "$log" | head -1
        grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log"
        grep -E '^#[0-9]+: cov:' "$log" | tail -1 # -fork's last line
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log"
    } | sed "s/^/fuzz: $t: /" || true
    # Without counters libFuzzer runs blind: the flags above did not take.
    if ! grep -qE '^INFO: Loaded [0-9]+ modules +\([1-9][0-9]* inline 8-bit counters\)' "$log"; then
        if [ "$status" -eq 0 ]; then
            echo "fuzz: $t: FAILED: no coverage counters (see $log)"
            failed+=("$t")
            continue
        fi
    fi
    if [ "$status" -ne 0 ]; then
        input="$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)"
        show_crash "$log"
        echo "fuzz: $t: CRASHED (exit $status): ${input:-no input written, see $log}"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s), ${seconds}s each: no crash"
