"""kaggle/: one kernel-metadata file per notebook in the form the Kaggle CLI documents
(github.com/Kaggle/kaggle-api, "Kernel Metadata"), and push.sh filling in the user name."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT / "kaggle"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("0*.ipynb"))
METADATA = sorted(KAGGLE.glob("*.json"))
PLACEHOLDER = "YOUR_KAGGLE_USERNAME"  # push.sh replaces it with the pusher's user name
REQUIRED = {"id": str, "title": str, "code_file": str, "language": str, "kernel_type": str, "is_private": bool,
            "enable_gpu": bool, "enable_internet": bool, "dataset_sources": list, "competition_sources": list,
            "kernel_sources": list}
MVTEC_SOURCE = "ipythonx/mvtec-ad"
SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def test_one_metadata_file_per_notebook():
    assert [p.stem for p in METADATA] == NOTEBOOKS


@pytest.mark.parametrize("path", METADATA, ids=lambda p: p.stem)
def test_metadata_file(path):
    meta = json.loads(path.read_text())
    for key, kind in REQUIRED.items():
        assert isinstance(meta.get(key), kind), f"{path.name}: {key} missing or not a {kind.__name__}"
    assert meta["code_file"] == f"{path.stem}.ipynb" and (ROOT / "notebooks" / meta["code_file"]).is_file()
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    # id: "<username>/<kernel slug>", the slug being the title lowercased with dashes for spaces
    user, slug = meta["id"].split("/")
    assert user == PLACEHOLDER, f"{path.name}: keep {PLACEHOLDER} (push.sh puts the user name in)"
    assert slug == meta["title"].lower().replace(" ", "-") and SLUG.match(slug), f"{path.name}: slug {slug!r}"
    assert 5 <= len(meta["title"]) <= 50, f"{path.name}: Kaggle titles are 5 to 50 characters"
    assert meta["enable_gpu"] and meta["enable_internet"]  # a GPU; internet for the clone and pip
    for source in meta["dataset_sources"]:
        assert re.match(r"^[\w-]+/[a-z0-9-]+$", source), f"{path.name}: dataset {source!r} is not <owner>/<slug>"
    if path.stem != "05_cifar_dual_discriminator":  # 05 downloads CIFAR-10 itself
        assert MVTEC_SOURCE in meta["dataset_sources"], f"{path.name}: MVTec AD not attached"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sed") is None, reason="needs bash and sed")
def test_push_puts_the_user_name_in(tmp_path):
    """push.sh with a fake `kaggle` CLI: the folder it pushes holds the notebook and the metadata
    with the user's name in the id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kaggle"
    fake.write_text(f'#!/usr/bin/env bash\n[ "$1 $2 $3" = "kernels push -p" ] && cp -r "$4" "{tmp_path}/pushed"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "KAGGLE_USERNAME": "alice"}
    subprocess.run(["bash", str(KAGGLE / "push.sh"), "02_train_mvtec"], env=env, check=True, capture_output=True)
    pushed = tmp_path / "pushed"
    meta = json.loads((pushed / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/transgan-anomaly-02-train-mvtec"
    assert (pushed / "02_train_mvtec.ipynb").read_bytes() == (ROOT / "notebooks" / "02_train_mvtec.ipynb").read_bytes()
