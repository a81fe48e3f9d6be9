"""The run folder's names: a GAN and a restorer of one category keep their training files apart."""
import pytest

from transgan_lib.runs import run_paths


def test_objectives_name_their_training_files_apart(tmp_path):
    gan, rest = run_paths(tmp_path, "demo"), run_paths(tmp_path, "demo", "restore")
    assert gan.history("json").name == "history.json" and rest.history("json").name == "restore_history.json"
    assert gan.samples().name == "samples_latest.png" and rest.samples(3).name == "restore_samples_epoch_0003.png"
    assert gan.train_summary.name == "train_summary.json" and rest.train_summary.name == "restore_train_summary.json"
    assert gan.metrics == rest.metrics and rest.method_metrics("restore").name == "metrics_restore.json"
    assert gan.checkpoint.name == "checkpoint.pt" and rest.restorer.name == "restorer.pt"
    with pytest.raises(ValueError, match="objective"):
        run_paths(tmp_path, "demo", "restorer")
