#!/usr/bin/env bash
# Debian tools the deployment tests run: `docker-compose config` (validates docker-compose.yml
# without a Docker engine), `promtool` (checks the Prometheus config and alert rules) and
# `haproxy` (the router of deploy/router/, run in front of three replicas by
# tests/deploy/test_router.py), and `wrk` for the benchmark smoke run. Installs only what is
# missing; a no-op on a machine that has them all.
set -euo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The headless browser and its driver that tests/http/test_playground.py drives.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# The load generator of the serving benchmark (benchmarks/run_all.py, its smoke run in CI).
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# The prometheus and haproxy packages would start their servers; only the binaries are wanted.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
