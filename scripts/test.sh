#!/usr/bin/env bash
# The README's test command (`make test`, called by .ci/run): set up both stacks, then run the whole suite on
# each, the pinned stack first, then the tests marked both_sessions from a Spark Connect session on the current
# stack, after the linter (ruff, configured in pyproject.toml). Each suite gets the other stack's interpreter in SPARKDL_OTHER_PYTHON for the
# cross-stack model tests. Prints the seconds of every stage; exits non-zero when a set-up or either suite
# fails (pytest's exit 5, no tests collected, counts as a failure). Each stage lists its 20 slowest tests
# (--durations=20), the figures to watch against the 60-minute budget. Extra arguments go to every pytest run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

declare -a SUMMARY=()
stage() {  # $1: name; the rest: the command
  local name="$1" started rc
  shift
  started=$(date +%s)
  echo "test: stage '$name' started $(date -u +%H:%M:%S)" >&2
  "$@"
  rc=$?
  if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests in '$name'" >&2; rc=1; fi
  SUMMARY+=("$(printf '%-16s %5d s  exit %d' "$name" $(( $(date +%s) - started )) "$rc")")
  return "$rc"
}

failed=0
stage setup-pinned scripts/setup.sh pinned || failed=1
stage setup-current scripts/setup.sh current || failed=1
[ "$failed" -eq 0 ] && { stage lint .venv/bin/ruff check sparkdl tests scripts jobs || failed=1; }
if [ "$failed" -eq 0 ]; then
  SPARKDL_OTHER_PYTHON="$PWD/.venv-current/bin/python" stage tests-pinned .venv/bin/python -m pytest tests \
    --durations=20 "$@" \
    || failed=1
  SPARKDL_OTHER_PYTHON="$PWD/.venv/bin/python" stage tests-current .venv-current/bin/python -m pytest tests \
    --durations=20 "$@" \
    || failed=1
  # The end-to-end paths again from a Spark Connect session (a local server): the tests marked both_sessions.
  SPARKDL_TEST_SESSION=connect stage tests-connect .venv-current/bin/python -m pytest tests -m both_sessions \
    --durations=20 "$@" \
    || failed=1
fi
echo "test: stages (load average now: $(cut -d' ' -f1-3 /proc/loadavg)):" >&2
printf '  %s\n' "${SUMMARY[@]}" >&2
exit "$failed"
