#!/usr/bin/env bash
# Runs the README's grpcurl and tokenctl examples (between the smoke markers) exactly as printed,
# against a zero-config tokend in a scratch directory, with real grpcurl 1.8.6. A command marked
# `# expect: CODE` must fail with that gRPC code, one marked `# expect-exit: N` must exit N; every
# other command must succeed; a ```text block must match the output of the command block before it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The tools live in the repository's target/ (scripts/test.sh puts them there); the binaries in
# cargo's target directory, which CARGO_TARGET_DIR may move elsewhere.
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
case "$bin_dir" in /*) ;; *) bin_dir="$root/$bin_dir" ;; esac # the commands below run elsewhere
export PATH="$root/target/venv-tools/bin:$bin_dir:$PATH"
command -v grpcurl >/dev/null || { echo "smoke: grpcurl missing (scripts/test.sh installs it)" >&2; exit 1; }
grpcurl -version 2>&1 | grep -q 'v1.8.6' || { echo "smoke: need grpcurl v1.8.6" >&2; exit 1; }
# --all-targets: the same feature set as `cargo test`, so after the suite this builds nothing.
cargo build -q --locked --all-targets
tokend="$bin_dir/tokend"

for port in 50051 8085; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "smoke: port $port is in use; the README examples need the default ports" >&2
    exit 1
  fi
done

work=$(mktemp -d)
daemon_pid=""
cleanup() {
  if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cd "$work"
"$tokend" >"$work/tokend.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/8085) 2>/dev/null && grpcurl -plaintext 127.0.0.1:50051 list >/dev/null 2>&1; then break; fi
  sleep 0.1
done

# Pull the blocks out of the README: lines of ```sh blocks are commands, ```text blocks expected output.
blocks=$(awk '
  /<!-- smoke:begin -->/ { on = 1; next }
  /<!-- smoke:end -->/ { on = 0 }
  on && /^```sh/ { kind = "cmd"; next }
  on && /^```text/ { kind = "out"; print "@@expect-output"; next }
  on && /^```/ { if (kind == "out") print "@@end-output"; kind = ""; next }
  on && kind == "cmd" { print "@@cmd " $0 }
  on && kind == "out" { print $0 }
' "$root/README.md")

count=0
last_output=""
expected=""
in_expected=0
while IFS= read -r line; do
  case "$line" in
    "@@cmd "*)
      cmd=${line#@@cmd }
      want_fail=""
      want_exit=""
      if [[ "$cmd" =~ \#\ expect:\ ([A-Za-z]+)$ ]]; then want_fail=${BASH_REMATCH[1]}; fi
      if [[ "$cmd" =~ \#\ expect-exit:\ ([0-9]+)$ ]]; then want_exit=${BASH_REMATCH[1]}; fi
      count=$((count + 1))
      if [[ "$cmd" =~ ^[A-Z_]+= ]]; then
        # An assignment: it must stay in this shell for the commands after it.
        eval "$cmd"
        continue
      fi
      set +e
      last_output=$(eval "$cmd" 2>&1)
      status=$?
      set -e
      if [ -n "$want_exit" ]; then
        if [ "$status" -ne "$want_exit" ]; then
          echo "smoke: expected exit $want_exit (got $status) from: $cmd" >&2; echo "$last_output" >&2; exit 1
        fi
      elif [ -n "$want_fail" ]; then
        if [ $status -eq 0 ] || ! grep -q "Code: $want_fail" <<<"$last_output"; then
          echo "smoke: expected $want_fail from: $cmd" >&2; echo "$last_output" >&2; exit 1
        fi
      elif [ $status -ne 0 ]; then
        echo "smoke: failed (exit $status): $cmd" >&2; echo "$last_output" >&2; exit 1
      fi
      ;;
    "@@expect-output") in_expected=1; expected="" ;;
    "@@end-output")
      in_expected=0
      if [ "$last_output" != "${expected%$'\n'}" ]; then
        echo "smoke: output differs from the README:" >&2
        diff <(printf '%s\n' "${expected%$'\n'}") <(printf '%s\n' "$last_output") >&2 || true
        exit 1
      fi
      ;;
    *) if [ $in_expected -eq 1 ]; then expected+="$line"$'\n'; fi ;;
  esac
done <<<"$blocks"

[ "$count" -gt 5 ] || { echo "smoke: found only $count README commands; markers broken?" >&2; exit 1; }

# /metrics must parse as Prometheus text and carry the documented families.
"$root/target/venv-tools/bin/python" - <<'PY'
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen("http://127.0.0.1:8085/metrics", timeout=5).read().decode()
names = {family.name for family in text_string_to_metric_families(text)}
wanted = {"tokend_profiles", "tokend_refreshes", "tokend_token_handouts", "tokend_store_size_bytes",
          "tokend_sweep_last_run_timestamp_seconds", "tokend_refresh_duration_seconds", "tokend_status_changes"}
missing = wanted - names
if missing:
    sys.exit(f"smoke: /metrics lacks {sorted(missing)}; has {sorted(names)}")
PY
count=$((count + 1))
if grep -q "my-box-client-secret" "$work/tokend.log"; then
  echo "smoke: the client secret appeared in the daemon log" >&2; exit 1
fi
echo "smoke: $count passed, 0 failed"
