#!/usr/bin/env bash
# Start-up of the daemon on a large kept data directory, taken apart: sled rebuilds its page
# table at open from the snapshot it wrote at its previous open plus every log write since. This
# script starts the engine benchmark's daemon child on the same directory two ways, alternating:
#
#   nothing to replay   the directory as its last start left it (sled's snapshot fresh)
#   whole log replayed  a copy with sled's snapshot file removed (sled reads its whole log, as it
#                       does after a log's worth was written since the previous start)
#
# and prints `Daemon::start` of each (the child's READY line: start µs, first call µs, warm
# profiles, RSS KiB). Each start waits for a load average below 0.45; the copy is synced first,
# because a start during a large copy's write-back measures the disk, not the open.
#
# Usage: benches/startup_replay.sh DATA_DIR [ROUNDS]   (from the repository root)
# DATA_DIR is a directory kept by `cargo bench --bench engine -- ... --keep-data` (the path it
# prints). It is opened (and its snapshot rewritten) but not otherwise changed; the copy goes next
# to it and is removed at the end. ENGINE_BIN may name an already built engine bench binary.
set -euo pipefail

data="${1:?usage: benches/startup_replay.sh DATA_DIR [ROUNDS]}"
rounds="${2:-4}"
[[ -d "$data/store" ]] || { echo "$data has no store/ directory: not a kept data directory" >&2; exit 2; }
bin="${ENGINE_BIN:-}"
if [[ -z "$bin" ]]; then
  bin=$(cargo bench --no-run --bench engine 2>&1 | sed -n 's/.*Executable benches\/engine.rs (\(.*\))/\1/p')
fi
copy=$(mktemp -d "$(dirname "$data")/replay.XXXXXX")
trap 'rm -rf "$copy"' EXIT

quiet() {
  while awk '{exit !($1 >= 0.45)}' /proc/loadavg; do sleep 5; done
}

start() {
  local dir=$1 label=$2 load
  quiet
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  # The child serves until its stdin closes: one second after READY.
  (sleep 1) | "$bin" --daemon "$dir" --cache-mb 16 | awk -v label="$label" -v load="$load" \
    '/^READY/ { printf "%-20s Daemon::start %5.0f ms  (load at start %s; %d profiles warm; RSS %d KiB)\n", label, $2 / 1000, load, $4, $5 }'
}

echo "log size: $(du -sh "$data/store/db" | cut -f1); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for round in $(seq "$rounds"); do
  rm -rf "$copy/data"
  cp -a "$data" "$copy/data"
  rm -f "$copy/data/store/snap."*
  sync
  echo "round $round"
  start "$data" "nothing to replay"
  start "$copy/data" "whole log replayed"
done
