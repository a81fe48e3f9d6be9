"""Notebook 02's training on two or more GPUs (issue 13): the GPU count, the torchrun command, the
log streamed line by line (a fake tiny command), and one real torchrun run on the CPU (gloo)."""
import json
import os
import sys

import pytest

from transgan_lib import launch
from transgan_lib.config import TrainConfig


def test_count_gpus():
    assert launch.count_gpus("auto", "auto", available=2) == 2
    assert launch.count_gpus("auto", "cuda", available=4) == 4
    assert launch.count_gpus("auto", "cpu", available=2) == 0  # a CPU run stays in the notebook
    assert launch.count_gpus("auto", "auto", available=0) == 0
    assert launch.count_gpus(1, "auto", available=2) == 1
    with pytest.raises(ValueError, match="2 CUDA GPU"):
        launch.count_gpus(3, "auto", available=2)
    for bad in ("two", -1, True):
        with pytest.raises(ValueError, match="gpus must be"):
            launch.count_gpus(bad, "auto", available=2)


def test_torchrun_command():
    cmd = launch.torchrun_command("runs/bottle/train_config.json", 2, python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "transgan_lib", "train", "--config", "runs/bottle/train_config.json"]


def test_child_env_finds_this_package():
    env = launch.child_env({"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(":") == [str(launch.PACKAGE_ROOT), "/elsewhere"]
    assert env["PYTHONUNBUFFERED"] == "1" and float(env["TQDM_MININTERVAL"]) > 1


SCRIPT = ("import sys; print('first'); sys.stderr.write('bar 10%\\rbar 50%\\r\\n'); "
          "[print(f'line {i}') for i in range(50)]; sys.exit(int(sys.argv[1]))")


def test_stream_command_streams_each_line(tmp_path):
    lines, log = [], tmp_path / "log.txt"
    launch.stream_command([sys.executable, "-c", SCRIPT, "0"], log_path=log, echo=lines.append)
    assert lines[:3] == ["first", "bar 10%", "bar 50%"] and lines[-1] == "line 49" and len(lines) == 53
    assert log.read_text().splitlines() == lines


def test_stream_command_raises_with_the_log_tail(tmp_path):
    lines = []
    with pytest.raises(launch.LaunchError, match="status 3") as err:
        launch.stream_command([sys.executable, "-c", SCRIPT, "3"], echo=lines.append, tail=5)
    message = str(err.value)
    assert "line 49" in message and "line 45" in message and "line 44" not in message
    assert len(lines) == 53  # streamed before it failed


def test_an_interrupted_stream_stops_the_command():
    """KeyboardInterrupt in the cell (here: echo raising it) must not leave the training running."""
    pids = []

    def interrupt(line):
        pids.append(int(line))
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        launch.stream_command([sys.executable, "-c", "import os, time; print(os.getpid()); time.sleep(60)"],
                              echo=interrupt)
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pids[0], 0)


@pytest.mark.parametrize("n", [0, 1])
def test_train_on_gpus_stays_in_process_below_two_gpus(monkeypatch, n):
    calls = []
    monkeypatch.setattr(launch, "count_gpus", lambda gpus, device: n)
    monkeypatch.setattr(launch, "train_distributed", lambda *a, **k: pytest.fail("torchrun without GPUs"))
    monkeypatch.setattr("transgan_lib.methods.transgan.train.train_gan",
                        lambda cfg, **kw: calls.append(kw) or {"history": []})
    assert launch.train_on_gpus(TrainConfig(), "auto", progress=False) == {"history": []}
    assert calls == [{"progress": False}]


def test_train_on_gpus_launches_torchrun_with_two(monkeypatch):
    calls = []
    monkeypatch.setattr(launch, "count_gpus", lambda gpus, device: 2)
    monkeypatch.setattr(launch, "train_distributed", lambda cfg, n: calls.append(n) or {"gpus": n})
    assert launch.train_on_gpus(TrainConfig(), "auto") == {"gpus": 2}
    assert calls == [2]


@pytest.mark.slow
def test_train_distributed_runs_torchrun_on_cpu(demo_root, tmp_path):
    """The real command: torchrun with 2 CPU processes (gloo) trains the notebook's config for one
    epoch; the config file, the streamed log (progress bar, last epoch) and the history come back."""
    cfg = TrainConfig(data_root=str(demo_root), category="demo", output_dir=str(tmp_path), image_size=32,
                      model_size="tiny", latent_dim=16, epochs=1, batch_size=8, device="cpu", threads=1)
    lines = []
    result = launch.train_distributed(cfg, 2, echo=lines.append)
    assert lines[0].startswith("launching: ") and "--nproc_per_node 2" in lines[0]
    run = tmp_path / "demo"
    assert TrainConfig.from_dict(json.loads((run / "train_config.json").read_text())) == cfg
    assert (run / "train_log.txt").read_text().splitlines() == lines[1:]
    assert any(line.startswith("demo: ") and "step" in line for line in lines)  # rank 0's progress bar
    last = json.loads(next(line for line in lines if line.startswith('{"checkpoint"')))["last_epoch"]
    assert result["history"][-1] == last and last["step"] == 2  # 36 images / 2 processes / batch 8
    assert result["checkpoint"] == str(run / "checkpoint.pt") and (run / "checkpoint.pt").is_file()
