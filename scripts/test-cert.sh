#!/usr/bin/env bash
# Makes a throwaway test CA and a certificate for localhost / 127.0.0.1 signed by it (P-256,
# valid 2 days) in DIR: ca.pem, server.pem, server.key. For tests and benchmarks only.
#
# Usage: scripts/test-cert.sh DIR
set -euo pipefail
dir="${1:?usage: scripts/test-cert.sh DIR}"
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
  -out ca.pem -days 2 -subj "/CN=hioload test CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
  -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' >ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
  -days 2 -extfile ext 2>/dev/null
