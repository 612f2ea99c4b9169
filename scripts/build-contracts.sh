#!/usr/bin/env bash
# Builds contracts/ with forge (offline, solcjs) and writes the artifact the service and CLI use,
# services/chain/ModelLicense.json. Commit that file whenever contracts/src changes; CI
# (scripts/check-contracts.sh) fails when it does not match the source.
#
#   scripts/build-contracts.sh [--test] [--out DIR] [--artifact PATH]
#     --test           also run `forge test`
#     --out DIR        forge output and cache under DIR (default: contracts/out, contracts/cache)
#     --artifact PATH  where to write the artifact (default: services/chain/ModelLicense.json)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_tests=0
out_dir=""
artifact="$root/services/chain/ModelLicense.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --test) run_tests=1 ;;
    --out) out_dir="$(mkdir -p "$2" && cd "$2" && pwd)"; shift ;;
    --artifact) artifact="$2"; shift ;;
    *) echo "build-contracts.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "$artifact" in /*) ;; *) artifact="$PWD/$artifact" ;; esac

forge="$root/node_modules/@foundry-rs/forge-linux-amd64/bin/forge"
[ -x "$forge" ] || forge="$root/node_modules/.bin/forge"
if [ ! -x "$forge" ] || [ ! -d "$root/node_modules/solc" ] || [ ! -d "$root/node_modules/@openzeppelin/contracts" ]; then
  echo "build-contracts.sh: forge, solc or @openzeppelin/contracts missing under node_modules/: run 'npm ci' in $root" >&2
  exit 1
fi

forge_args=()
if [ -n "$out_dir" ]; then
  forge_args=(--out "$out_dir/out" --cache-path "$out_dir/cache")
  forge_out="$out_dir/out"
else
  forge_out="$root/contracts/out"
fi

cd "$root/contracts"
"$forge" build --quiet "${forge_args[@]}"
if [ "$run_tests" = 1 ]; then
  "$forge" test "${forge_args[@]}"
fi
node tools/artifact.cjs "$forge_out/ModelLicense.sol/ModelLicense.json" src/ModelLicense.sol "$artifact"
echo "wrote ${artifact#"$root"/}"
