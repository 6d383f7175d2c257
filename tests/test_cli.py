"""The CLI through Typer's CliRunner: commands, help, and one-line errors for bad input."""
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from genlab.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tiny_train(tmp_path, tiny_sets, model="gan", name="run", steps=2, extra=()):
    sets = [x for s in tiny_sets for x in ("--set", s)]
    return invoke("train", model, "--steps", steps, "--out", tmp_path, "--name", name, "--no-progress",
                  *sets, *extra)


@pytest.mark.parametrize("command", ["train", "sample", "list"])
def test_every_command_has_useful_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


def test_list_models_and_datasets():
    result = invoke("list", "models")
    assert result.exit_code == 0 and "wgan-gp" in result.output and "gan" in result.output
    result = invoke("list", "datasets")
    assert "mnist" in result.output and "ring8" in result.output
    assert invoke("list", "nope").exit_code == 2


def test_dry_run_prints_resolved_config():
    result = invoke("train", "wgan-gp", "--dry-run", "--steps", "7", "--set", "gan.d_width=16")
    assert result.exit_code == 0
    cfg = yaml.safe_load(result.output)
    assert cfg["train"]["steps"] == 7 and cfg["gan"]["d_width"] == 16 and cfg["gan"]["n_critic"] == 5


@pytest.mark.parametrize("args, message", [
    (("train", "wgan-pg", "--dry-run"), "did you mean 'wgan-gp'"),
    (("train", "gan", "--dry-run", "--set", "train.nope=1"), "unknown config key 'train.nope'"),
    (("train", "gan", "--dry-run", "--set", "train.steps=many"), "train.steps"),
    (("train", "gan", "--dataset", "cifar100", "--steps", "1"), "unknown dataset 'cifar100'"),
    (("sample", "/nonexistent/run"), "not a genlab run directory"),
])
def test_bad_arguments_give_one_line_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_sample_interpolate_and_resume_errors(tmp_path, tiny_sets):
    result = _tiny_train(tmp_path, tiny_sets)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").is_file()

    out = tmp_path / "grid.png"
    result = invoke("sample", run, "-n", 9, "--out", out, "--seed", 3)
    assert result.exit_code == 0, result.output
    w, h = Image.open(out).size
    assert w == h == 3 * 28 + 4 * 2  # 3x3 grid of 28px images with 2px padding

    interp = tmp_path / "interp.png"
    result = invoke("sample", run, "--interpolate", "-n", 8, "--steps", 4, "--out", interp)
    assert result.exit_code == 0, result.output
    assert Image.open(interp).size == (4 * 28 + 5 * 2, 2 * 28 + 3 * 2)

    again = tmp_path / "grid2.png"
    invoke("sample", run, "-n", 9, "--out", again, "--seed", 3)
    assert out.read_bytes() == again.read_bytes(), "same seed -> same grid"

    result = invoke("sample", run, "--checkpoint", "step-99")
    assert result.exit_code == 2 and "no checkpoint 'step-99'" in result.output

    result = invoke("train", "wgan-gp", "--resume", run, "--steps", 4, "--no-progress")
    assert result.exit_code == 2 and "run of 'gan', not 'wgan-gp'" in result.output
    result = invoke("train", "gan", "--resume", run, "--no-progress")
    assert result.exit_code == 2 and "already finished" in result.output
    result = _tiny_train(tmp_path, tiny_sets)
    assert result.exit_code == 2 and "already holds a run" in result.output

    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    result = invoke("train", "gan", "--resume", run, "--steps", 4, "--no-progress")
    assert result.exit_code == 2 and "corrupt" in result.output


def test_toy_data_writes_scatter_plot(tmp_path, tiny_sets):
    result = _tiny_train(tmp_path, tiny_sets, model="wgan-gp", extra=("--dataset", "ring8"))
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert pngs and Image.open(pngs[-1]).size == (500, 500)
