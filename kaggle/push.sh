#!/usr/bin/env bash
# Push one notebook to Kaggle as a kernel:  bash kaggle/push.sh 02_train_mvtec
# Needs the kaggle CLI (pip install kaggle) and ~/.kaggle/kaggle.json (or KAGGLE_USERNAME and
# KAGGLE_KEY). The "id" in kaggle/<notebook>.json is YOUR_KAGGLE_USERNAME/<slug>: the copy pushed
# gets your user name (KAGGLE_USERNAME, else kaggle.json's "username"). See kaggle/README.md.
set -euo pipefail
name=${1:?usage: bash kaggle/push.sh <notebook stem, e.g. 02_train_mvtec>}
root=$(cd "$(dirname "$0")/.." && pwd)
user=${KAGGLE_USERNAME:-$(python3 -c 'import json, pathlib; print(json.loads((pathlib.Path.home() / ".kaggle" / "kaggle.json").read_text())["username"])')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$root/notebooks/$name.ipynb" "$work/"
sed "s|YOUR_KAGGLE_USERNAME/|$user/|" "$root/kaggle/$name.json" > "$work/kernel-metadata.json"
kaggle kernels push -p "$work"
