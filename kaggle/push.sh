#!/usr/bin/env bash
# Push one notebook to Kaggle as a kernel:  bash kaggle/push.sh 02_train_mvtec
# Needs the kaggle CLI (pip install kaggle) and ~/.kaggle/kaggle.json. Edit the "id" in
# kaggle/<notebook>.json to your user name first. On Kaggle, MVTec AD is attached at
# /kaggle/input/mvtec-ad: run the notebook with data_root = "/kaggle/input/mvtec-ad".
set -euo pipefail
name=${1:?usage: bash kaggle/push.sh <notebook stem, e.g. 02_train_mvtec>}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cp "$root/notebooks/$name.ipynb" "$work/"
cp "$root/kaggle/$name.json" "$work/kernel-metadata.json"
kaggle kernels push -p "$work"
