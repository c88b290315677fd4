#!/usr/bin/env bash
# Kernel work per GetAccessToken call, tokend (server A) against the bare tonic server (B):
# system calls and context switches of the server process per call, counted by `perf stat`
# (software tracepoints; no hardware counters needed) while h2load sends REQUESTS calls
# (4 connections × 64 streams, the consumer's bearer token). Together with the user-space
# instruction counts of benches/callgrind_handout.sh this gives the per-call cost of both servers
# without timing anything, so it holds on a shared machine where CPU-time ratios swing by ±20 %.
#
# Usage: benches/syscalls_handout.sh [--big-token] [REQUESTS]   (from the repository root; needs
# perf and h2load). HANDOUT_BIN may name an already built handout bench binary.
set -euo pipefail

big=()
if [[ "${1:-}" == "--big-token" ]]; then big=(--big-token); shift; fi
requests="${1:-200000}"
# shellcheck source=benches/handout_bin.sh
source "$(dirname "$0")/handout_bin.sh"
# The GetAccessToken request for profile mail-bench, as a gRPC frame.
printf '000000000c0a0a6d61696c2d62656e6368' | xxd -r -p >"$work/body.grpc"

# run_server LABEL ARGS... → prints "LABEL syscalls/call context-switches/call"
run_server() {
  local label=$1; shift
  start_server "$label" "$bin" --serve "$@"
  local pid=$server_pid addr=$server_addr
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$work/$label.perf" &
  local perf=$!
  sleep 0.5
  h2load -n "$requests" -c 4 -m 64 -H 'content-type: application/grpc' -H 'te: trailers' \
    -H 'authorization: Bearer bench-consumer-token' -d "$work/body.grpc" \
    "http://$addr/tokend.v1.Tokens/GetAccessToken" >"$work/$label.h2load"
  kill -INT "$perf"; wait "$perf" || true
  exec 7>&-
  wait "$pid"
  grep -q "succeeded, 0 failed, 0 errored" "$work/$label.h2load" || { echo "h2load errors on $label" >&2; cat "$work/$label.h2load" >&2; exit 1; }
  awk -F, -v n="$requests" -v l="$label" '/sys_enter/ {s=$1} /context-switches/ {c=$1}
    END {printf "%s %.3f %.3f\n", l, s / n, c / n}' "$work/$label.perf"
}

a=$(run_server a a "${big[@]}")
hex=$(awk '{print $3}' "$work/a.out")
b=$(run_server b b --token-hex "$hex")
echo "$a" "$b" | awk '{
  printf "A tokend: %.3f system calls, %.3f context switches per call\n", $2, $3;
  printf "B bare:   %.3f system calls, %.3f context switches per call\n", $5, $6;
  printf "A/B: system calls %.3f, context switches %.3f\n", $2 / $5, $3 / $6 }'
