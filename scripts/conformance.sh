#!/usr/bin/env bash
# Run Autobahn|Testsuite (wstest) through wsgate, one direction and one
# permessage-deflate mix at a time.
#
#   scripts/conformance.sh DIRECTION MIX [CASES] [EXCLUDE]
#
#   DIRECTION  client: wstest fuzzingclient -> wsgate -> echo_server.py
#                      (tests wsgate's client leg as a server, relaying to a backend)
#              server: testee_client.py -> wsgate -> wstest fuzzingserver
#                      (tests wsgate's backend leg as a client, relaying from a client)
#   MIX        CLIENT-BACKEND: wsgate's --client-deflate and --backend-deflate
#              values, e.g. on-on, on-off, off-on, off-off (any policy string
#              without a '-', such as on,no_context_takeover, works too). wstest
#              tests one leg: 12.*/13.* (compression) are UNIMPLEMENTED when
#              that leg (client leg for client, backend leg for server) is off
#   CASES      comma-separated wstest case patterns, default "*"
#   EXCLUDE    comma-separated case patterns to skip, default none
#
# Examples:
#   scripts/conformance.sh client on-on '*' '12.*,13.*'     # groups 1-10, ~45 s
#   scripts/conformance.sh client on-off '12.1.*,13.1.*'    # compression sample, ~4 min
#   WSTEST_TIMEOUT=5400 scripts/conformance.sh server on-on # all 517 cases, 30-45 min
#
# wsgate runs as `twistd -n wsgate` from the project's venv on a free port of
# 127.0.0.1 (tcp:0, the port is read from its log); the echo backend also
# picks its own port; the fuzzingserver gets a free port. Every process this
# script starts runs in its own session and is stopped on exit (also on
# INT/TERM). The report directory holds wstest's reports (index.json,
# index.html, per-case JSON), wsgate.log, the backend's log and summary.json.
#
# Environment (optional):
#   WSGATE_SHARED        the shared dir (default <repo>/../shared); the harness
#                        is $WSGATE_SHARED/conformance
#   WSTEST_HOME          where setup.sh built wstest (default /tmp/wstest)
#   VENV                 the project's venv (default <repo>/.venv, made by `make venv`)
#   CONFORMANCE_REPORTS  parent of the report directory (default $WSTEST_HOME/reports)
#   CONFORMANCE_RESULTS  append one tab-separated result line to this file
#                        (direction, mix, cases, exclude, exit, wall s, figure, report
#                        dir, number of tracebacks in wsgate.log)
#   WSTEST_TIMEOUT       limit of the wstest/testee run in seconds (harness default 1800)
#   WSGATE_ARGS          extra arguments for wsgate, split on spaces
#   WSGATE_NO_EXTENSIONS 1: wsgate runs Autobahn's Python frame path (the label
#                        gets /py); the log's "frame path:" line is printed
#   WSGATE_WORKERS       worker processes (--workers, or workers = N in the
#                        config file; default 1: one process, no supervisor)
#   WSGATE_VIA           cli (default): options on the command line; config: the
#                        same settings from a TOML file ($R/wsgate.toml, --config)
#
# Prints the harness's output and summarize.py's summary, then one line
#   conformance: DIRECTION MIX exit=N wall=Ss cases=... ok=... failed=... wsgate_tracebacks=N
# (a traceback in wsgate's log is reported, with the first one shown, but does
# not change the exit status).
# Exit status: 0 no FAILED case, 1 some FAILED case, 2 harness/run error
# (wstest error or timeout, no report, wsgate or the backend died or did not
# start), 3 usage or setup error.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "conformance.sh: $*" >&2; exit 3; }

case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] && [ $# -le 4 ] || { usage >&2; exit 3; }
DIRECTION=$1
MIX=$2
CASES=${3:-*}
EXCLUDE=${4:-}
case "$DIRECTION" in client|server) ;; *) die "DIRECTION must be client or server (got '$DIRECTION')" ;; esac
case "$MIX" in
  ?*-?*) ;;
  *) die "MIX must be CLIENT-BACKEND deflate, e.g. on-on, on-off, off-on, off-off (got '$MIX')" ;;
esac
CLIENT_DEFLATE=${MIX%%-*}
BACKEND_DEFLATE=${MIX#*-}
case "$BACKEND_DEFLATE" in *-*) die "MIX has more than one '-' (got '$MIX')" ;; esac

SHARED=${WSGATE_SHARED:-$REPO/../shared}
T=$SHARED/conformance
[ -x "$T/fuzzingclient.sh" ] || [ -r "$T/fuzzingclient.sh" ] \
  || die "conformance harness not found at $T (set WSGATE_SHARED)"
T=$(cd "$T" && pwd)
export WSTEST_HOME=${WSTEST_HOME:-/tmp/wstest}
PY3=$WSTEST_HOME/py3/bin/python
[ -x "$PY3" ] && [ -x "$WSTEST_HOME/bin/wstest" ] \
  || die "wstest not set up under $WSTEST_HOME; run $T/setup.sh first"
VENV=${VENV:-$REPO/.venv}
GATE_PY=$VENV/bin/python
"$GATE_PY" -c 'import wsgate, autobahn, twisted' 2>/dev/null \
  || die "$GATE_PY cannot import wsgate; run 'make venv' first (or set VENV)"
command -v setsid >/dev/null || die "setsid (util-linux) not found"

AGENT=$(echo "wsgate-$DIRECTION-$MIX" | tr -c 'A-Za-z0-9_.\n-' '_')
STAMP=$(date +%Y%m%d-%H%M%S)-$$
PARENT=${CONFORMANCE_REPORTS:-$WSTEST_HOME/reports}
R=$PARENT/$AGENT-$STAMP
mkdir -p "$R" || die "cannot create $R"
R=$(cd "$R" && pwd)

# ---- process handling -------------------------------------------------------
# Each child is started with setsid: its PID is the id of a new session, and
# everything it starts stays in that session (`timeout` in the harness moves
# its child to a process group of its own, but not out of the session), so
# stopping every process of the session stops all of it.
PGIDS=()
session_pids() { ps -e -o pid=,sid=,stat= | awk -v s="$1" '$2 == s && $3 !~ /^Z/ { print $1 }'; }
stop_group() {
  local sid=$1 pids i
  pids=$(session_pids "$sid")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  for i in $(seq 1 50); do
    pids=$(session_pids "$sid")
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
}
cleanup() {
  local pg
  # Reverse start order: the harness first, then wsgate, then the backend.
  for ((i = ${#PGIDS[@]} - 1; i >= 0; i--)); do
    pg=${PGIDS[$i]}
    stop_group "$pg"
    wait "$pg" 2>/dev/null
  done
  PGIDS=()
}
trap cleanup EXIT
trap 'echo "conformance.sh: interrupted" >&2; exit 2' INT TERM HUP

free_port() {
  "$PY3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_line PID FILE SED_EXPR SECONDS: print the first match of SED_EXPR
# (a sed -n expression that prints the wanted value) in FILE, or fail when
# PID exits or SECONDS pass.
wait_for_line() {
  local pid=$1 file=$2 expr=$3 limit=$4 value i
  for i in $(seq 1 $((limit * 10))); do
    value=$(sed -n "$expr" "$file" 2>/dev/null | head -n 1)
    if [ -n "$value" ]; then echo "$value"; return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

echo "conformance: direction=$DIRECTION client-deflate=$CLIENT_DEFLATE backend-deflate=$BACKEND_DEFLATE cases=$CASES exclude=${EXCLUDE:-none}"
echo "conformance: reports and logs in $R"

# ---- the backend ------------------------------------------------------------
if [ "$DIRECTION" = client ]; then
  ECHO_ARGS=(--port 0)
  [ "$BACKEND_DEFLATE" = off ] && ECHO_ARGS+=(--no-deflate)
  setsid "$PY3" "$T/echo_server.py" "${ECHO_ARGS[@]}" >"$R/echo_server.log" 2>&1 &
  EPID=$!
  PGIDS+=("$EPID")
  if ! BPORT=$(wait_for_line "$EPID" "$R/echo_server.log" \
                 's/^echo_server: listening on ws:\/\/127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' 30); then
    echo "conformance.sh: echo_server.py did not start; its log:" >&2
    tail -n 20 "$R/echo_server.log" >&2
    exit 2
  fi
  echo "conformance: backend echo_server.py pid $EPID on ws://127.0.0.1:$BPORT ($(sed -n 's/.*(\(permessage-deflate [a-z]*\)).*/\1/p' "$R/echo_server.log"))"
else
  # The fuzzingserver is started by fuzzingserver.sh below, after wsgate;
  # wsgate only connects to its backend when a client arrives.
  BPORT=$(free_port) || die "no free port"
fi

# ---- wsgate -----------------------------------------------------------------
# shellcheck disable=SC2206
EXTRA=(${WSGATE_ARGS:-})
if [ "${WSGATE_VIA:-cli}" = config ]; then
  # The same setup from a configuration file (the --config path), with a
  # second listener and route beside it so the run goes through real routing.
  cat >"$R/wsgate.toml" <<TOML
workers = ${WSGATE_WORKERS:-1}

[defaults]
client_deflate = "$CLIENT_DEFLATE"
backend_deflate = "$BACKEND_DEFLATE"

[[listener]]
endpoint = "tcp:0:interface=127.0.0.1"
health = "/healthz"

[[listener]]
endpoint = "unix:$R/unused.sock"

[[route]]
prefix = "/"
backends = ["ws://127.0.0.1:$BPORT"]

[[route]]
prefix = "/unused"
hosts = ["unused.example"]
backend = "ws://127.0.0.1:1"
TOML
  GATE_ARGS=(--config "$R/wsgate.toml")
else
  GATE_ARGS=(--listen tcp:0:interface=127.0.0.1
    --backend "ws://127.0.0.1:$BPORT"
    --client-deflate "$CLIENT_DEFLATE" --backend-deflate "$BACKEND_DEFLATE"
    --workers "${WSGATE_WORKERS:-1}")
fi
GATE_CMD=("$GATE_PY" -c 'from twisted.scripts.twistd import run; run()'
  -n --pidfile= wsgate "${GATE_ARGS[@]}" "${EXTRA[@]}")
echo "conformance: wsgate: ${GATE_CMD[*]:3}" | sed 's/tcp:0:/tcp:PORT:/'
(cd "$R" && exec setsid "${GATE_CMD[@]}") >"$R/wsgate.log" 2>&1 &
GPID=$!
PGIDS+=("$GPID")
# twistd's listening port logs "<Factory> starting on <port>".
if ! GPORT=$(wait_for_line "$GPID" "$R/wsgate.log" 's/.* starting on \([0-9][0-9]*\)$/\1/p' 60); then
  echo "conformance.sh: wsgate did not start listening; its log:" >&2
  tail -n 30 "$R/wsgate.log" >&2
  exit 2
fi
echo "conformance: wsgate pid $GPID listening on ws://127.0.0.1:$GPORT -> ws://127.0.0.1:$BPORT"
# Which frame path wsgate runs (WSGATE_NO_EXTENSIONS=1 in the environment: Autobahn's).
FRAME_PATH=$(sed -n 's/.*frame path: \([a-z]*\).*/\1/p' "$R/wsgate.log" | head -n 1)
echo "conformance: $(grep -m 1 -o 'frame path: .*' "$R/wsgate.log" || echo 'frame path: not logged')"

# ---- the run ----------------------------------------------------------------
START=$(date +%s.%N)
if [ "$DIRECTION" = client ]; then
  WSTEST_AGENT=$AGENT WSTEST_REPORTS=$R \
    setsid "$T/fuzzingclient.sh" "ws://127.0.0.1:$GPORT" "$CASES" "$EXCLUDE" &
else
  WSTEST_REPORTS=$R \
    setsid "$T/fuzzingserver.sh" --testee "ws://127.0.0.1:$GPORT" --agent "$AGENT" \
      "$BPORT" "$CASES" "$EXCLUDE" &
fi
HPID=$!
PGIDS+=("$HPID")
wait "$HPID"
RC=$?
END=$(date +%s.%N)
WALL=$(awk -v a="$START" -v b="$END" 'BEGIN { printf "%.1f", b - a }')

# ---- after the run: wsgate and the backend must still be up ------------------
if ! kill -0 "$GPID" 2>/dev/null; then
  echo "conformance.sh: wsgate exited during the run; last lines of $R/wsgate.log:" >&2
  tail -n 30 "$R/wsgate.log" >&2
  [ "$RC" -ne 0 ] || RC=2
fi
if [ "$DIRECTION" = client ] && ! kill -0 "$EPID" 2>/dev/null; then
  echo "conformance.sh: echo_server.py exited during the run; last lines of its log:" >&2
  tail -n 20 "$R/echo_server.log" >&2
  [ "$RC" -ne 0 ] || RC=2
fi
cleanup

TRACEBACKS=$(grep -c 'Traceback (most recent call last)' "$R/wsgate.log")
if [ "$TRACEBACKS" -gt 0 ]; then
  echo "conformance: WARNING: $TRACEBACKS traceback(s) in $R/wsgate.log; the first:"
  grep -m 1 -A 25 'Traceback (most recent call last)' "$R/wsgate.log" | sed 's/^/    /'
fi

FIGURE="no report"
if [ -s "$R/index.json" ]; then
  FIGURE=$("$PY3" "$T/summarize.py" "$R" --quiet --json "$R/summary.json" | tail -n 1)
fi
LABEL=$MIX
[ "${WSGATE_VIA:-cli}" = config ] && LABEL="$MIX/cfg"
[ "$FRAME_PATH" = python ] && LABEL="$LABEL/py"
[ "${WSGATE_WORKERS:-1}" = 1 ] || LABEL="$LABEL/w${WSGATE_WORKERS}"
echo "conformance: $DIRECTION $LABEL exit=$RC wall=${WALL}s $FIGURE wsgate_tracebacks=$TRACEBACKS"
if [ -n "${CONFORMANCE_RESULTS:-}" ]; then
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$DIRECTION" "$LABEL" "$CASES" "${EXCLUDE:--}" \
    "$RC" "$WALL" "$FIGURE" "$R" "$TRACEBACKS" >>"$CONFORMANCE_RESULTS"
fi
exit "$RC"
