"""The training loop: run directories, exact resume, atomic checkpoints, divergence guard."""
import os

import pytest
import torch

from genlab import checkpoint
from genlab import config as C
from genlab.errors import CheckpointError, RunError, TrainingDiverged
from genlab.train import Trainer


def _cfg(tmp_path, tiny_sets, steps, name="run", extra=()):
    sets = tiny_sets + [f"train.steps={steps}", f"out={tmp_path}", f"name={name}", "train.checkpoint_every=3"]
    return C.resolve("wgan-gp", sets=sets + list(extra))


def _weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["family_state"]


def test_run_directory_layout(tmp_path, tiny_sets):
    cfg = _cfg(tmp_path, tiny_sets, 4)
    result = Trainer(cfg, tmp_path / "run", show_progress=False).run()
    run = tmp_path / "run"
    assert result["step"] == 4
    assert (run / "config.yaml").is_file() and C.load_run_config(run).train.steps == 4
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "step-3.pt").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step-2.png", "step-4.png"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"train/d_loss"' in lines[0] and '"train/images_per_sec"' in lines[0]
    assert list((run / "tb").iterdir()), "TensorBoard events written"


def _assert_same_state(a, b):
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    for opt in ("opt_g", "opt_d"):
        for pid, st in a[opt]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b[opt]["state"][pid][k]), f"{opt}.{pid}.{k} differs"


@pytest.mark.parametrize("extra", [(), ("train.ema_decay=0.9",)])
def test_resume_is_exact(tmp_path, tiny_sets, extra):
    full = Trainer(_cfg(tmp_path, tiny_sets, 6, "full", extra), tmp_path / "full", show_progress=False)
    full.run()
    half = Trainer(_cfg(tmp_path, tiny_sets, 3, "half", extra), tmp_path / "half", show_progress=False)
    half.run()
    resumed_cfg = _cfg(tmp_path, tiny_sets, 6, "half", extra)
    Trainer(resumed_cfg, tmp_path / "half", resume=True, show_progress=False).run()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    _assert_same_state(a, b)
    ea = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["ema"]
    eb = checkpoint.load(tmp_path / "half" / "checkpoints" / "last.pt")["ema"]
    if ea is not None:
        for k in ea["shadow"]:
            assert torch.equal(ea["shadow"][k], eb["shadow"][k])


def test_resume_finished_run_is_an_error(tmp_path, tiny_sets):
    cfg = _cfg(tmp_path, tiny_sets, 2)
    Trainer(cfg, tmp_path / "run", show_progress=False).run()
    with pytest.raises(RunError, match="already finished 2 steps"):
        Trainer(cfg, tmp_path / "run", resume=True, show_progress=False).run()


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    good = {"format": checkpoint.FORMAT, "version": 1, "step": 1, "w": torch.ones(3)}
    checkpoint.save_atomic(good, path)

    def exploding_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({**good, "step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temp file left behind"


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a genlab checkpoint"):
        checkpoint.load(foreign)

    class Evil:  # a pickle that would run code is refused by weights_only loading
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="corrupt or not a genlab checkpoint"):
        checkpoint.load(evil)
    good = tmp_path / "good.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": 1, "model": "gan"}, good)
    with pytest.raises(CheckpointError, match="belongs to model 'gan'"):
        checkpoint.load(good, model="wgan-gp")


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_sets):
    cfg = _cfg(tmp_path, tiny_sets, 6)
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    real_step = trainer.family.train_step

    def poisoned(batch, step):
        losses = real_step(batch, step)
        return {**losses, "d_loss": float("nan")} if step == 5 else losses

    trainer.family.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="step 5: loss d_loss = nan"):
        trainer.run()
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
