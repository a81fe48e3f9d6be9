"""Notebook runtime set-up, called by the first cell of every notebook (one line there).

It finds out where the notebook runs ("colab", "kaggle" or "local"), shows figures inline, and
reports the device torch will use, so a reader sees at once whether a GPU is attached.
"""
from __future__ import annotations

import os
import sys


def detect_runtime(environ=None) -> str:
    """"colab", "kaggle" or "local", from the variables those services set."""
    environ = os.environ if environ is None else environ
    if "COLAB_RELEASE_TAG" in environ or "COLAB_GPU" in environ:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in environ or "KAGGLE_URL_BASE" in environ:
        return "kaggle"
    return "local"


def setup_notebook(verbose: bool = True) -> str:
    """Inline figures (when run inside IPython) and one line naming the runtime and device."""
    try:
        ipython = get_ipython()  # type: ignore[name-defined]  # noqa: F821 (defined inside IPython)
        ipython.run_line_magic("matplotlib", "inline")
    except NameError:
        pass
    runtime = detect_runtime()
    if verbose:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"transgan_lib runtime: {runtime}, python {sys.version.split()[0]}, torch {torch.__version__}, "
              f"device {device}")
    return runtime
