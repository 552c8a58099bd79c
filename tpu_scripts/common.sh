# shellcheck shell=bash
# Shared by the launchers in tpu_scripts/ (sourced, not run).

# Runs a command, or prints it (shell-quoted, one line) when DRY_RUN=1.
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Prints lines FIRST..LAST of the calling script (its usage comment) and exits 2.
usage_lines() {
  sed -n "$1,$2p" "$0" >&2
  exit 2
}

# Every launcher takes --dry_run first. Sourced without arguments, this file
# sees the launcher's arguments: it consumes --dry_run and sets DRY_RUN.
DRY_RUN=0
if [ "${1:-}" = "--dry_run" ]; then
  DRY_RUN=1
  shift
fi
