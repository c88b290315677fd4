#!/usr/bin/env bash
# Instructions per GetAccessToken call, tokend (server A) against the bare tonic server (B),
# counted by callgrind: user-space instruction counts do not depend on what else the machine is
# running, so the A/B ratio is steadier than CPU time on a shared machine.
#
# Each server runs under `valgrind --tool=callgrind --instr-atstart=no`; counting is switched on
# (callgrind_control -i on) once it is serving, a load process runs for SECONDS (4 connections ×
# 16 calls in flight), counting is switched off, and the server exits when its stdin closes.
#
# Caveats: valgrind hides SHA extensions from the CPU, so tokend's SHA-256 of the bearer token
# runs the portable code (about 3,500 instructions instead of a few hundred); kernel time
# (syscalls) is not counted.
#
# Usage: benches/callgrind_handout.sh [--big-token] [--unix] [SECONDS]   (from the repository root)
# --unix serves both on Unix sockets. HANDOUT_BIN may name an already built handout bench binary;
# CALLGRIND_KEEP=DIR keeps the profiles (cg.a, cg.b) there for callgrind_annotate.
set -euo pipefail

big=()
unix=0
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --big-token) big=(--big-token) ;;
    --unix) unix=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
seconds="${1:-10}"
# shellcheck source=benches/handout_bin.sh
source "$(dirname "$0")/handout_bin.sh"
sockets=()
if [[ $unix == 1 ]]; then sockets=(--unix "$work"); fi
keep="${CALLGRIND_KEEP:-}"

# run_server LABEL ARGS... → prints "LABEL calls instructions"; leaves the reply hex in $work/LABEL.out
run_server() {
  local label=$1; shift
  start_server "$label" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.$label" \
    "$bin" --serve "$@"
  local vpid=$server_pid addr=$server_addr
  callgrind_control -i on "$vpid" >/dev/null 2>&1
  local calls
  calls=$("$bin" --load --target "$addr" --connections 4 --concurrency 16 --warmup 0 --seconds "$seconds" |
    awk '/^RESULT/ {print $8}')
  callgrind_control -i off "$vpid" >/dev/null 2>&1
  exec 7>&-
  wait "$vpid"
  local ir
  ir=$(callgrind_annotate "$work/cg.$label" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$label $calls $ir"
}

a=$(run_server a a "${big[@]}" "${sockets[@]}")
hex=$(awk '{print $3}' "$work/a.out")
b=$(run_server b b --token-hex "$hex" "${sockets[@]}")
if [[ -n "$keep" ]]; then mkdir -p "$keep" && cp "$work/cg.a" "$work/cg.b" "$keep/"; fi
echo "$a" "$b" | awk '{
  pa = $3 / $2; pb = $6 / $5;
  printf "A tokend: %d calls, %.0f instructions per call\n", $2, pa;
  printf "B bare:   %d calls, %.0f instructions per call\n", $5, pb;
  printf "A/B: %.3f\n", pa / pb }'
