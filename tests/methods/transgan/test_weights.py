"""The weights-only export beside a GAN checkpoint: small, loadable for scoring, tied to its source."""
import pytest
import torch

from transgan_lib.methods.transgan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_models,
    scoring_file,
    source_fingerprint,
)
from transgan_lib.runs import file_fingerprint, run_paths


def test_weights_export_loads_the_same_models(trained_run):
    paths = run_paths(trained_run.output_dir, trained_run.category)
    assert paths.weights.is_file() and paths.weights.stat().st_size < paths.checkpoint.stat().st_size / 2
    G1, D1, mc1, tc1 = load_models(paths.checkpoint)
    G2, D2, mc2, tc2 = load_models(paths.weights)
    assert mc1 == mc2 and tc1 == tc2
    for a, b in ((G1, G2), (D1, D2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the weights file names the checkpoint it came from, so mapping files made with one match the other
    fingerprint = file_fingerprint(paths.checkpoint)
    assert source_fingerprint(paths.weights) == fingerprint == source_fingerprint(paths.checkpoint)
    assert scoring_file(paths) == paths.checkpoint


def test_weights_file_is_not_a_training_checkpoint(trained_run, tmp_path):
    paths = run_paths(trained_run.output_dir, trained_run.category)
    with pytest.raises(CheckpointError, match="'gan-weights' checkpoint, but a 'gan' checkpoint is expected"):
        load_checkpoint(paths.weights)  # training cannot resume from it
    only_weights = run_paths(tmp_path, "x")
    only_weights.root.mkdir()
    only_weights.weights.write_bytes(paths.weights.read_bytes())
    assert scoring_file(only_weights) == only_weights.weights
