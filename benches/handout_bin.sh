# Sourced by the hand-out scripts (callgrind_handout.sh, syscalls_handout.sh): sets `bin` to the
# hand-out benchmark binary ($HANDOUT_BIN, or cargo's release build of benches/handout.rs) and
# `work` to a temporary directory removed when the script exits.
bin="${HANDOUT_BIN:-}"
if [[ -z "$bin" ]]; then
  bin=$(cargo bench --no-run --bench handout 2>&1 | sed -n 's/.*Executable benches\/handout.rs (\(.*\))/\1/p')
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
