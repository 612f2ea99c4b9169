#!/usr/bin/env bash
# CI check: builds contracts/ from scratch in a temporary directory, runs `forge test`, and fails
# if the committed services/chain/ModelLicense.json is not what the source builds to.
#
#   scripts/check-contracts.sh [--no-test] [--artifact PATH]
#     --no-test        skip `forge test` (compare the artifact only)
#     --artifact PATH  the committed artifact to compare (default: services/chain/ModelLicense.json)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
test_flag=(--test)
committed="$root/services/chain/ModelLicense.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-test) test_flag=() ;;
    --artifact) committed="$2"; shift ;;
    *) echo "check-contracts.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if ! "$root/scripts/build-contracts.sh" "${test_flag[@]}" --out "$tmp/build" --artifact "$tmp/ModelLicense.json" \
  >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  echo "check-contracts.sh: building or testing contracts/ failed (output above)" >&2
  exit 1
fi
grep -E "tests passed|tests? failed" "$tmp/build.log" || true

if [ ! -f "$committed" ]; then
  echo "check-contracts.sh: $committed does not exist; run scripts/build-contracts.sh and commit it" >&2
  exit 1
fi
if ! cmp -s "$tmp/ModelLicense.json" "$committed"; then
  echo "check-contracts.sh: $committed does not match what contracts/src builds to." >&2
  echo "Run scripts/build-contracts.sh and commit services/chain/ModelLicense.json. Difference (committed vs built):" >&2
  diff -u "$committed" "$tmp/ModelLicense.json" | cut -c1-200 | head -n 40 >&2 || true
  exit 1
fi
echo "contracts: artifact matches the source${test_flag:+, forge tests pass}"
