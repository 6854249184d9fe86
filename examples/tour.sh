#!/usr/bin/env bash
# `make run`: the API with one local worker on the embedded SQLite default, an API token,
# the example study submitted and watched, then the best schedule as PyTorch code.
# Keeps serving until Ctrl-C (LRTUNE_RUN_EXIT=1 stops once the study is done).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export LRTUNE_DATABASE_URL="${LRTUNE_DATABASE_URL:-sqlite:///lrtune.db}"
PORT="${LRTUNE_PORT:-8000}"
export LRTUNE_URL="http://127.0.0.1:${PORT}"
SPEC="${1:-examples/digits.json}"

"$BIN/lrtune" migrate
export LRTUNE_TOKEN="${LRTUNE_TOKEN:-$("$BIN/lrtune" token create --name make-run)}"
# the server's and worker's log lines go to a file, not into the progress bar
"$BIN/lrtune" serve --port "$PORT" --workers 1 > lrtune-serve.log 2>&1 &
SERVER=$!
trap 'rc=$?; kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; exit $rc' EXIT
for _ in $(seq 1 100); do
  curl -fs "$LRTUNE_URL/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { echo "lrtune serve failed to start (port $PORT taken?); see lrtune-serve.log" >&2; tail -5 lrtune-serve.log >&2; exit 1; }
  sleep 0.2
done
ID=$("$BIN/lrtune" submit "$SPEC" --name "$(basename "$SPEC" .json)-$(date +%Y%m%d-%H%M%S)")
cat <<MSG

  API docs:   $LRTUNE_URL/docs
  Dashboard:  $LRTUNE_URL/dashboard/
  Study:      $LRTUNE_URL/studies/$ID
  Token:      export LRTUNE_TOKEN=$LRTUNE_TOKEN
  Server log: lrtune-serve.log

MSG
"$BIN/lrtune" watch "$ID"
echo
"$BIN/lrtune" best "$ID" --code pytorch
if [ "${LRTUNE_RUN_EXIT:-0}" = "1" ]; then exit 0; fi
echo "Still serving on $LRTUNE_URL (dashboard at /dashboard/); Ctrl-C to stop."
wait "$SERVER"
