#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient (../shared/tools/autobahn) against a release build of
# hioload-echo on loopback and fails on any case that is not OK (FAILED, NON-STRICT, UNIMPLEMENTED).
#
# Usage: scripts/autobahn.sh [CASES]    (default: every case; the permessage-deflate ones, 12.*
#                                        and 13.*, only with AUTOBAHN_DEFLATE=1)
# Env:   AUTOBAHN_IO=auto|poll|io-uring   the server's --io backend (default auto)
#        AUTOBAHN_DEFLATE=1               also run 12.* and 13.* (all 517 cases; ~7 minutes more)
#        AUTOBAHN_TLS=1                   over wss:// (a test CA and certificate made by openssl)
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${AUTOBAHN_TOOLS:-../shared/tools/autobahn}"
cases="${1:-*}"
port="${AUTOBAHN_PORT:-9301}"
outdir="target/autobahn-report"

"$tools/install.sh" >/dev/null
cargo build --release -p hioload-echo
io="${AUTOBAHN_IO:-auto}"
scheme=ws
tls=()
if [ "${AUTOBAHN_TLS:-0}" = 1 ]; then
  pki=target/autobahn-pki
  rm -rf "$pki" && scripts/test-cert.sh "$pki"
  tls=(--tls-cert "$pki/server.pem" --tls-key "$pki/server.key")
  scheme=wss
fi
target/release/hioload-echo --addr "127.0.0.1:$port" --workers 2 --io "$io" "${tls[@]}" >target/autobahn-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" target/autobahn-server.log && break; sleep 0.1; done
grep "listening on" target/autobahn-server.log || { echo "autobahn.sh: hioload-echo did not start" >&2; cat target/autobahn-server.log >&2; exit 1; }

status=0
deflate=(--no-deflate)
[ "${AUTOBAHN_DEFLATE:-0}" = 1 ] && deflate=()
"$tools/run.sh" "$scheme://127.0.0.1:$port/ws" "$cases" "${deflate[@]}" --outdir "$outdir" \
  --timeout 1200 --agent hioload-echo || status=$?
kill -0 "$server" 2>/dev/null || { echo "autobahn.sh: hioload-echo died during the run" >&2; tail -20 target/autobahn-server.log >&2; exit 1; }
[ "$status" -eq 0 ] || exit "$status"

# Strict: every case must be OK (run.sh fails only on FAILED).
python3 - "$outdir/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c = s["counts"]
print("autobahn: %d cases, counts %s" % (s["reported"], json.dumps(c, sort_keys=True)))
bad = {k: v for k, v in s.get("non_ok", {}).items() if k != "INFORMATIONAL" and v}
if bad or s["reported"] != s["selected"]:
    print("autobahn: not strict:", json.dumps(bad, sort_keys=True))
    sys.exit(1)
print("autobahn: every case OK (INFORMATIONAL cases are by design)")
PY
