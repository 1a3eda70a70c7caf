#!/usr/bin/env bash
# Builds and runs the hioload-wsproto fuzz targets (session, handshake, frame_header) with the
# stable toolchain only. The crate is outside the main workspace.
#
# Usage: ws/fuzz/run.sh check                      CI: build both flavours, run each target briefly
#        ws/fuzz/run.sh standalone TARGET [ARGS]   plain binary: corpus replay + mutation loop
#        ws/fuzz/run.sh libfuzzer TARGET [SECONDS] coverage-guided libFuzzer run (default 60 s),
#                                                  corpus kept in ws/fuzz/corpus/TARGET
# Env: FUZZ_SECONDS (check: seconds per target and flavour, default 15). Needs a C++ compiler
# (g++) for the libFuzzer flavour. A crash leaves its input in ws/fuzz/ (crash-*).
set -euo pipefail
cd "$(dirname "$0")"
targets="session handshake frame_header"
triple=$(rustc -vV | sed -n 's/^host: //p')
# What `cargo fuzz` passes, minus the nightly-only sanitizer flag. --target keeps these flags
# away from build scripts.
sancov="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"

build_standalone() { cargo build --release --bins; }
build_libfuzzer() { RUSTFLAGS="$sancov" cargo build --release --bins --features libfuzzer --target "$triple"; }

run_libfuzzer() { # TARGET SECONDS
  local corpus="corpus/$1"
  mkdir -p "$corpus" artifacts
  target/release/"$1" --dump-seeds "$corpus"
  "target/$triple/release/$1" "$corpus" -max_total_time="$2" -max_len=8192 \
    -artifact_prefix="artifacts/$1-" -print_final_stats=1
}

case "${1:-}" in
  check)
    secs="${FUZZ_SECONDS:-15}"
    build_standalone
    for t in $targets; do target/release/"$t" --seconds "$secs" --iterations 2000000; done
    build_libfuzzer
    mkdir -p artifacts
    for t in $targets; do
      log="artifacts/$t.log"
      if ! run_libfuzzer "$t" "$secs" >"$log" 2>&1; then tail -40 "$log"; echo "$t: libFuzzer FAILED" >&2; exit 1; fi
      echo "$t: libFuzzer ok: $(grep -E '^Done' "$log")"
    done
    ;;
  standalone)
    [ -n "${2:-}" ] || { echo "usage: $0 standalone TARGET [ARGS]" >&2; exit 2; }
    build_standalone
    t="$2"; shift 2
    target/release/"$t" "$@"
    ;;
  libfuzzer)
    [ -n "${2:-}" ] || { echo "usage: $0 libfuzzer TARGET [SECONDS]" >&2; exit 2; }
    build_standalone
    build_libfuzzer
    run_libfuzzer "$2" "${3:-60}"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
