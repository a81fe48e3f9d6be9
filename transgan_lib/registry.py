"""The registry of methods: each detector's name, the network it trains and how its files are named.
The CLI, the benchmark runner, the main job, the notebooks and the Python API read it."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class Method:
    """A detector: its name, the network it trains (`TrainConfig.objective`), its name in notebooks
    03/04 and `score` (`MappingConfig.method`, also the suffix of mapping_<scoring>.pt and
    metrics_<scoring>.json), its label in tables, and older spellings of its name."""
    name: str
    objective: str
    scoring: str
    label: str
    aliases: Tuple[str, ...] = ()


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("restorer", "restore", "restore", "restorer", aliases=("restore",)),
    Method("iterative", "gan", "iterative", "TransGAN AnoGAN"),
    Method("encoder", "gan", "encoder", "TransGAN f-AnoGAN encoder"),
    Method("hybrid", "gan", "hybrid", "TransGAN hybrid"),
)}
OBJECTIVES = ("gan", "restore")
OBJECTIVE_ALIASES = {"restorer": "restore"}
MAPPING_METHODS = tuple(m.scoring for m in METHODS.values() if m.objective == "gan")  # the latent searches
RESTORE_METHOD = METHODS["restorer"].scoring


def get_method(name: str) -> Method:
    """The registry's method of `name` (an alias or a scoring name too); ValueError listing the names."""
    for m in METHODS.values():
        if name in (m.name, m.scoring) + m.aliases:
            return m
    close = difflib.get_close_matches(str(name), list(METHODS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}.{hint}")

def scoring_name(name: str) -> str:
    """`name` as notebooks 03/04 and the files spell it ("restorer" is "restore"); an unknown name passes
    through unchanged, for the caller's own error."""
    try:
        return get_method(name).scoring
    except ValueError:
        return name


__all__ = ["Method", "METHODS", "OBJECTIVES", "OBJECTIVE_ALIASES", "MAPPING_METHODS", "RESTORE_METHOD", "get_method",
           "scoring_name"]
