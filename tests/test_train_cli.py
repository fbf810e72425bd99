"""``ckbd train`` as a careless user runs it: checked arguments, no clobbered checkpoint, a saving Ctrl-C."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckbd.cli.main import main  # noqa: E402
from ckbd.models.checkpoint import read_checkpoint_file  # noqa: E402
from ckbd.training import DEFAULT_LR, TrainConfig  # noqa: E402

#: Options for a run that takes well under a second per step on one core.
TINY = ["--N", "8", "--M", "8", "--crop", "64", "--batch", "1", "--threads", "1"]


def train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", [
    ["--batch", "0"], ["--crop", "0"], ["--crop", "-64"], ["--crop", "17"], ["--checkpoint-every", "0"],
    ["--lr", "-1"], ["--lambda", "-0.01"], ["--steps", "0"], ["--steps", "-5"], ["--ste-from", "5"],
    ["--device", "gpu"], ["--threads", "-1"], ["--N", "0"], ["--arch", "nosuch"],
])
def test_bad_values_are_usage_errors_before_any_work(bad, image_folder, tmp_path, capsys):
    out = tmp_path / "x.pt"
    code, stdout, err = train(capsys, "--data", str(image_folder), "-o", str(out), *TINY, *bad)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad[0] in lines[0], err
    assert not out.exists() and stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_usage_error(image_folder, tmp_path, capsys):
    code, _, err = train(capsys, "--data", str(image_folder), "-o", str(tmp_path / "x.pt"), "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err


def test_outputs_and_inputs_are_checked_first(image_folder, tmp_path, capsys):
    code, _, err = train(capsys, "--data", str(image_folder), "-o", str(tmp_path / "nosuchdir" / "x.pt"))
    assert code == 2 and "nosuchdir" in err and "does not exist" in err
    code, _, err = train(capsys, "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.pt"))
    assert code == 2 and "no such folder" in err


def test_an_existing_checkpoint_is_never_replaced_without_resume_or_force(image_folder, tmp_path, capsys):
    out = tmp_path / "keep.pt"
    out.write_bytes(b"precious")
    code, _, err = train(capsys, "--data", str(image_folder), "-o", str(out), *TINY, "--steps", "1")
    assert code == 1 and "--resume" in err and "--force" in err  # as for every command's existing output
    assert out.read_bytes() == b"precious"

    code, _, err = train(capsys, "--data", str(image_folder), "-o", str(out), *TINY, "--steps", "1", "--force", "-q")
    assert code == 0, err
    assert read_checkpoint_file(out)["training"]["step"] == 1


def test_resume_refuses_other_architecture_options(image_folder, tmp_path, capsys):
    out = tmp_path / "run.pt"
    assert train(capsys, "--data", str(image_folder), "-o", str(out), *TINY, "--steps", "1", "-q")[0] == 0
    before = out.read_bytes()
    for other in (["--N", "16"], ["--M", "16"], ["--arch", "mbt2018-mean"]):
        code, _, err = train(capsys, "--data", str(image_folder), "-o", str(out), "--crop", "64", "--batch", "1",
                             "--steps", "2", "--resume", *other)
        assert code == 2, err
        assert "holds mbt2018-ckbd N=8 M=8" in err and other[0] in err
    assert out.read_bytes() == before
    # The same options, or none: the run continues.
    code, stdout, err = train(capsys, "--data", str(image_folder), "-o", str(out), "--crop", "64", "--batch", "1",
                              "--steps", "2", "--resume", "--N", "8", "-q")
    assert code == 0, err
    assert read_checkpoint_file(out)["training"]["step"] == 2


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(image_folder, tmp_path, capsys):
    code, stdout, err = train(capsys, "--data", str(image_folder), "-o", str(tmp_path / "a.pt"), *TINY, "--steps", "3")
    assert code == 0, err
    assert "\r" not in err
    assert re.search(r"^train: 3/3 steps \(100 %\), .*loss=", err, re.M), err
    assert "3 steps" in stdout

    code, _, err = train(capsys, "--data", str(image_folder), "-o", str(tmp_path / "b.pt"), *TINY, "--steps", "3",
                         "--quiet")
    assert code == 0 and err == ""


def test_defaults_are_the_shipped_recipe():
    """`ckbd train` without options trains the shipped model's recipe (RECIPE.json)."""
    from ckbd.cli.train import train_command

    recipe = json.loads((Path(__file__).parents[1] / "src" / "ckbd" / "assets" / "RECIPE.json").read_text())
    saved = recipe["train_config"]
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    # The machine's settings (threads, device) and the saved rate (the annealing phase's) aside.
    for key in ("arch", "N", "M", "lmbda", "steps", "batch", "crop", "aux_lr", "ste_from", "checkpoint_every", "seed"):
        assert defaults[key] == saved[key], key
    first_rate = re.search(r"Adam lr ([0-9.e-]+)", recipe["notes"])
    assert first_rate and DEFAULT_LR == float(first_rate.group(1))
    cli_defaults = {name: param.default.default for name, param in inspect.signature(train_command).parameters.items()
                    if hasattr(param.default, "default")}
    for key in ("lmbda", "steps", "batch", "crop", "ste_from", "checkpoint_every", "seed"):
        assert cli_defaults[key] == defaults[key], key


def test_ctrl_c_saves_and_resume_continues_from_that_step(image_folder, tmp_path):
    out = tmp_path / "run.pt"
    command = [sys.executable, "-m", "ckbd", "train", "--data", str(image_folder), "-o", str(out), *TINY,
               "--steps", "100000", "--checkpoint-every", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CKBD_DEBUG": ""}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # training has run when the first periodic checkpoint exists
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "\r" not in stderr
    match = re.search(r"interrupted at step (\d+); saved", stderr)
    assert match, stderr
    step = int(match.group(1))
    assert step >= 4 and read_checkpoint_file(out)["training"]["step"] == step

    resumed = subprocess.run([*command[:-4], "--steps", str(step + 2), "--resume"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{step + 2} steps" in resumed.stdout
    assert re.search(rf"^train: {step + 2}/{step + 2} steps", resumed.stderr, re.M), resumed.stderr
    assert read_checkpoint_file(out)["training"]["step"] == step + 2


def test_the_first_signal_is_recorded_and_a_second_one_stops_at_once():
    from ckbd.stop_signals import StopOnSignal

    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # recorded; the loop decides when to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
