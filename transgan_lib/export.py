"""Export an evaluated one-pass detector to ONNX: its whole scoring path as one graph, with the run's
threshold and settings beside it, so a line PC scores with ONNX Runtime alone (`deploy/predict_onnx.py`:
numpy, Pillow, onnxruntime). Two detectors score in one pass:

- the restorer (method "restore"): restoration, defect head, the run's map kind (the fused map's patch
  bank included) and smoothing, the image score;
- the f-AnoGAN encoder (method "encoder"): x^ = G(E(x)) with the TransGAN's generator, the run's
  residual map kind and smoothing, the image score.

`python -m transgan_lib export --checkpoint runs/<category>/restorer.pt --format onnx` writes
`<out>/restorer.onnx` and `<out>/restorer.json` (`--checkpoint runs/<category>/checkpoint.pt --method
encoder`: `encoder.onnx` and `encoder.json`). The graph takes images (B, 3, S, S) in [-1, 1] (RGB,
resized to S x S with bilinear filtering, x / 127.5 - 1: `data.images.load_image`) and returns the
smoothed maps (B, S, S), the scores (B,) (the max of each map) and the reconstructions (B, 3, S, S)
(output name "restorations").

Shape letters: B images, S the model's image size.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .config import FUSED_MAP_KIND, RESTORE_METHOD
from .methods.restorer.detect import detection_maps
from .methods.scoring import Scorer, model_file
from .runs import file_fingerprint
from .utils import PathLike, atomic_write_json, atomic_write

OUTPUTS = ("maps", "scores", "restorations")
EXPORTED = {RESTORE_METHOD: "restorer", "encoder": "encoder"}  # method: file name of its graph


class RestorerScoring(nn.Module):
    """A restorer's one-pass scoring as a module: images (B, 3, S, S) -> (maps (B, S, S), scores (B,),
    restorations (B, 3, S, S)), with the map kind and smoothing of the evaluated run."""

    def __init__(self, restorer: nn.Module, *, map_kind: str, sigma: float, fusion: Optional[nn.Module] = None):
        super().__init__()
        self.restorer, self.map_kind, self.sigma, self.fusion = restorer, map_kind, float(sigma), fusion

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_hat, logits = self.restorer(images, segment=True)
        result = SimpleNamespace(reconstructions=x_hat, defect_maps=torch.sigmoid(logits.float()))
        maps = detection_maps(images, result, self.map_kind, self.sigma, self.fusion)  # (B, S, S)
        return maps, maps.flatten(1).amax(1), x_hat


class EncoderScoring(nn.Module):
    """f-AnoGAN's one pass as a module: images (B, 3, S, S) -> (maps (B, S, S), scores (B,), G(E(x))
    (B, 3, S, S)), with the map kind and smoothing of the evaluated run."""

    def __init__(self, encoder: nn.Module, generator: nn.Module, *, map_kind: str, sigma: float):
        super().__init__()
        self.encoder, self.generator, self.map_kind, self.sigma = encoder, generator, map_kind, float(sigma)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_hat = self.generator(self.encoder(images)).float()
        maps = detection_maps(images, SimpleNamespace(reconstructions=x_hat), self.map_kind, self.sigma)
        return maps, maps.flatten(1).amax(1), x_hat


def scoring_module(checkpoint_or_run_dir: PathLike, *, method: str = RESTORE_METHOD
                   ) -> Tuple[nn.Module, Dict[str, Any]]:
    """The evaluated run's scoring module (CPU, eval mode) and the settings written beside the graph."""
    if method not in EXPORTED:
        raise ValueError(f"only the one-pass detectors ({', '.join(EXPORTED)}) export; method {method!r} needs "
                         "the latent search")
    scorer = Scorer(checkpoint_or_run_dir, method=method, device="cpu")
    run = scorer.run
    if method == RESTORE_METHOD:
        fusion = scorer.fusion if run.map_kind == FUSED_MAP_KIND else None  # its patch bank goes into the graph
        module = RestorerScoring(scorer.G.eval(), map_kind=run.map_kind, sigma=run.config.sigma, fusion=fusion)
    else:
        module = EncoderScoring(scorer.encoder.eval(), scorer.G.eval(), map_kind=run.map_kind, sigma=run.config.sigma)
    module.eval()
    source = model_file(run.paths, method)
    settings = {
        "method": method, "image_size": scorer.image_size, "map_kind": run.map_kind, "sigma": run.config.sigma,
        "threshold": run.threshold,
        "threshold_rule": (run.metrics or {}).get("threshold_rule", "none: the run was not evaluated (notebook 04)"),
        "decision": "anomalous when score >= threshold",
        "input": "images (B, 3, S, S): RGB, resized to S x S (bilinear), then x / 127.5 - 1",
        "outputs": {"maps": "(B, S, S) smoothed anomaly maps", "scores": "(B,) max of each map",
                    "restorations": "(B, 3, S, S) in [-1, 1]: the restoration, or G(E(x)) for the encoder"},
        "source": {"checkpoint": str(source), "fingerprint": run.checkpoint_fingerprint},
    }
    return module, settings


def export_onnx(checkpoint_or_run_dir: PathLike, out_dir: Optional[PathLike] = None, *,
                method: str = RESTORE_METHOD, opset: int = 17) -> Path:
    """Write `<out_dir>/restorer.onnx` (`encoder.onnx` for method "encoder"; batch size free) and the .json of
    the same name (threshold and settings); out_dir defaults to `<run folder>/export`. Returns the .onnx path."""
    module, settings = scoring_module(checkpoint_or_run_dir, method=method)
    run_dir = Path(settings["source"]["checkpoint"]).parent
    out = Path(out_dir) if out_dir is not None else run_dir / "export"
    S = settings["image_size"]
    example = torch.zeros(2, 3, S, S)
    path = out / f"{EXPORTED[method]}.onnx"

    def write(f):
        torch.onnx.export(module, (example,), f, input_names=["images"], output_names=list(OUTPUTS),
                          dynamic_axes={name: {0: "batch"} for name in ("images",) + OUTPUTS},
                          opset_version=opset, dynamo=False)
    with torch.no_grad():
        atomic_write(path, write)
    atomic_write_json({**settings, "onnx": path.name, "onnx_fingerprint": file_fingerprint(path),
                       "opset": opset}, path.with_suffix(".json"))
    return path


def read_settings(onnx_path: PathLike) -> Dict[str, Any]:
    """The settings written beside an exported graph (`restorer.json`)."""
    return json.loads(Path(onnx_path).with_suffix(".json").read_text())


__all__ = ["EXPORTED", "RestorerScoring", "EncoderScoring", "scoring_module", "export_onnx", "read_settings"]
