#!/usr/bin/env bash
# The prepared GPU check (README, "What to expect on a GPU"): under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                      # on a GPU machine; results in runs/gpu_check/
#   bash benchmarks/gpu_check.sh --out "$OUT"         # elsewhere
#   bash benchmarks/gpu_check.sh --dry-run            # CPU, tiny models, one step each (CI: tests/test_benchmarks.py)
#
# Each section (benchmarks/gpu_check.py: env, train, score, compile, demo) runs in its own process under its
# own time limit, so an out-of-memory, a crash or a slow compile costs that section only; the limits and
# the report add up to 7.5 minutes (the dry run takes all sections in one process). Then `report` prints
# every section's results (and writes <out>/summary.md). Exit status 1 when a section failed or timed out.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's transgan_lib, installed or not
OUT=runs/gpu_check
DRY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=(--dry-run) ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
mkdir -p "$OUT"
status=0
start=$SECONDS

section() {  # section LIMIT_SECONDS NAME...: the sections in one process, killed after LIMIT_SECONDS
  local limit=$1
  shift
  echo "== $* (limit $limit s, $((SECONDS - start)) s so far)"
  timeout --kill-after=5 "$limit" "$PY" benchmarks/gpu_check.py "$@" --out "$OUT" "${DRY[@]}"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "!! $* failed (exit $rc$([ $rc -eq 124 ] && echo ': timed out'))"
    status=1
  fi
}

if [ ${#DRY[@]} -eq 0 ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
fi
if [ ${#DRY[@]} -gt 0 ]; then
  section 240 env train score compile demo report  # one process: CI pays for the imports once
else
  section 20 env
  section 80 train
  section 70 score
  section 150 compile  # most of it: inductor compiling the base G and D the first time
  section 120 demo
  "$PY" benchmarks/gpu_check.py report --out "$OUT"
fi
echo "== done in $((SECONDS - start)) s; results in $OUT"
exit $status
