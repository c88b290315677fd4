# Sourced by the hand-out scripts (callgrind_handout.sh, syscalls_handout.sh): sets `bin` to the
# hand-out benchmark binary ($HANDOUT_BIN, or cargo's release build of benches/handout.rs) and
# `work` to a temporary directory removed when the script exits.
bin="${HANDOUT_BIN:-}"
if [[ -z "$bin" ]]; then
  bin=$(cargo bench --no-run --bench handout 2>&1 | sed -n 's/.*Executable benches\/handout.rs (\(.*\))/\1/p')
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# start_server LABEL COMMAND... : runs COMMAND (a server role of the benchmark, maybe under a
# tool) with its stdin on a pipe held open by fd 7 (`exec 7>&-` stops it), its output in
# $work/LABEL.out; waits for its READY line; sets `server_pid` and `server_addr`.
start_server() {
  local label=$1; shift
  mkfifo "$work/$label.in"
  "$@" <"$work/$label.in" >"$work/$label.out" 2>"$work/$label.err" &
  server_pid=$!
  exec 7>"$work/$label.in"
  until grep -q READY "$work/$label.out"; do sleep 0.2; done
  server_addr=$(awk '{print $2}' "$work/$label.out")
}
