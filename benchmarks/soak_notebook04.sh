#!/usr/bin/env bash
# Notebook 04 (method restore, with the explorer widget) run N times in a row under `papermill --log-output`
# beside another running kernel, each limited to LIMIT seconds: a hang shows as rc=124.
# usage: bash benchmarks/soak_notebook04.sh [N=20] [WORK=/tmp/soak04] [LIMIT=300]
set -u
n=${1:-20}; work=${2:-/tmp/soak04}; limit=${3:-300}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"; cd "$work" || exit 1
common=(-p category demo -p data_root "$work/data" -p output_dir "$work/runs")
papermill "$repo/notebooks/02_train_mvtec.ipynb" 02.ipynb "${common[@]}" -p objective restore -p model_size tiny \
  -p image_size 32 -p epochs 2 -p batch_size 16 -p lr 5e-4 -p sample_every 2 > 02.log 2>&1 || { echo "02 failed"; exit 1; }
papermill "$repo/notebooks/03_latent_mapping.ipynb" 03.ipynb "${common[@]}" -p method restore > 03.log 2>&1 \
  || { echo "03 failed"; exit 1; }
# the other kernel: a notebook that keeps a core busy for the whole soak
python3 - <<'PY'
import nbformat
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell("import time\nt = time.time()\nwhile time.time() - t < 3600: sum(range(10000))")]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbformat.write(nb, "busy.ipynb")
PY
papermill busy.ipynb busy_out.ipynb > busy.log 2>&1 &
busy=$!
sleep 5
hangs=0
for i in $(seq 1 "$n"); do
  t0=$(date +%s.%N)
  timeout "$limit" papermill --log-output "$repo/notebooks/04_residual_heatmaps.ipynb" "04_$i.ipynb" "${common[@]}" \
    -p method restore > "04_$i.log" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && hangs=$((hangs + 1))
  printf 'run %2d rc=%d %.1f s\n' "$i" "$rc" "$(echo "$(date +%s.%N) - $t0" | bc)"
done
kill "$busy" 2>/dev/null; pkill -f "busy.ipynb" 2>/dev/null
echo "notebook 04: $hangs hangs in $n runs (limit $limit s each, beside a busy kernel)"
[ "$hangs" -eq 0 ]
