#!/bin/sh
# spawnd's warm launcher (issue #28), run as a warm server's command:
#   launch.sh HANDOFF_DIR -- CMD [ARGS...]
# or to measure what importing CMD's server costs (spawnd build, doctor):
#   launch.sh --cost -- CMD [ARGS...]
# It finds the Python that CMD's console script runs on and starts
# launcher.py there; an env whose command is not a Python console script
# cannot be pre-warmed: exit 3, saying why (the pool starts it cold).
handoff="$1"
shift
[ "$1" = "--" ] && shift
cold() { # why: as the pool reads it (exit 3, its last log line), or as cost mode prints it
  if [ "$handoff" = "--cost" ]; then printf '{"cold": "%s"}\n' "$1"; exit 0; fi
  echo "spawnd-launcher: cannot pre-warm: $1" >&2; exit 3
}
cmd=$(command -v "$1") || cold "the env's command $1 is not on PATH"
IFS= read -r first < "$cmd" || first=""
case "$first" in
'#!'*python*) py=${first#??} ;;
*) cold "$cmd is not a Python console script (its first line is not a python #! line)" ;;
esac
# The #! line is the interpreter and at most its one argument (env python3).
exec $py "$(dirname "$0")/launcher.py" "$handoff" "$cmd" "$@"
