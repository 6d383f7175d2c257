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


def test_a_nan_between_log_steps_is_caught_before_the_next_checkpoint(tmp_path, tiny_sets):
    # Losses are read back every log_every steps only; a checkpoint step reads them too, so a NaN at
    # step 5 (logs at 4 and 8) stops the run at step 6, before last.pt (step 3) is replaced.
    cfg = _cfg(tmp_path, tiny_sets, 8, extra=("train.log_every=4",))
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    real_step = trainer.family.train_step

    def poisoned(batch, step):
        losses = real_step(batch, step)
        return {**losses, "g_loss": torch.tensor(float("nan"))} if step == 5 else losses

    trainer.family.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="between steps 5 and 6: loss g_loss = nan"):
        trainer.run()
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3


def test_logged_losses_are_means_over_the_log_window(tmp_path, tiny_sets):
    cfg = _cfg(tmp_path, tiny_sets, 4, extra=("train.log_every=2",))
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    seen = []
    real_step = trainer.family.train_step

    def recording(batch, step):
        losses = real_step(batch, step)
        seen.append(float(losses["d_loss"]))
        return losses

    trainer.family.train_step = recording
    trainer.run()
    import json

    logged = [json.loads(s)["train/d_loss"] for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([(seen[0] + seen[1]) / 2, (seen[2] + seen[3]) / 2], rel=1e-6)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, tiny_sets, amp):
    # fp16: a GradScaler per optimizer, also scaling the gradient penalty's own autograd.grad; its
    # state is in the checkpoint, so N + N resumed steps equal 2N straight ones, bit for bit.
    if amp == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    extra = (f"train.amp={amp}",)
    Trainer(_cfg(tmp_path, tiny_sets, 6, "full", extra), tmp_path / "full", show_progress=False).run()
    Trainer(_cfg(tmp_path, tiny_sets, 3, "half", extra), tmp_path / "half", show_progress=False).run()
    Trainer(_cfg(tmp_path, tiny_sets, 6, "half", extra), tmp_path / "half", resume=True, show_progress=False).run()
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["family_state"]
    b = checkpoint.load(tmp_path / "half" / "checkpoints" / "last.pt")["family_state"]
    _assert_same_state(a, b)
    if amp == "fp16":
        assert a["opt_d"]["grad_scaler"] == b["opt_d"]["grad_scaler"] and "scale" in a["opt_d"]["grad_scaler"]
    for v in a["G"].values():
        assert torch.isfinite(v.float()).all()


@pytest.mark.parametrize("option", ["train.channels_last=true", "train.compile=true"])
def test_channels_last_and_compile_change_no_result(tmp_path, option):
    # compile: inductor on this CPU (C compiler); a 2-D MLP GAN keeps the compile time to seconds.
    # The gradient penalty takes its double backward through the eager D (compiled graphs lack it).
    # Other kernels sum in another order; Adam's epsilon is raised so that float noise in gradients that
    # are mathematically zero (biases before BatchNorm) is not turned into +-lr steps (see test_ddp.py).
    model, data = ("wgan-gp", "data.name=ring8") if "compile" in option else ("gan", "data.name=mnist")
    sets = ["gan.g_width=8", "gan.d_width=8", "train.batch_size=8", "train.steps=3", "train.log_every=1",
            "train.sample_every=100", "train.grid_size=4", data, f"out={tmp_path}",
            "gan.g_optim.eps=1e-4", "gan.d_optim.eps=1e-4", "train.amp=off", "train.channels_last=off"]
    results = {}
    for name, extra in (("plain", []), ("option", [option])):
        Trainer(C.resolve(model, sets=sets + extra), tmp_path / name, show_progress=False).run()
        results[name] = checkpoint.load(tmp_path / name / "checkpoints" / "last.pt")["family_state"]
    for net in ("G", "D"):
        for k, v in results["plain"][net].items():
            assert torch.allclose(v.float(), results["option"][net][k].float(), rtol=1e-4, atol=1e-5), (
                f"{net}.{k} {(v.float() - results['option'][net][k].float()).abs().max():.3g}")


def test_ema_warm_up_follows_the_tensorflow_rule_and_survives_a_checkpoint():
    """Update n uses decay min(d, (1 + n) / (10 + n)): the random initial weights fade at once."""
    from genlab.ema import EMA

    net = torch.nn.Linear(3, 2)
    ema = EMA([net], 0.999)
    expected = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for n in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        ema.update()
        d = min(0.999, (1 + n) / (10 + n))
        expected = {k: d * expected[k] + (1 - d) * v for k, v in net.state_dict().items()}
    for k, v in expected.items():
        assert torch.allclose(ema.shadow[k], v, atol=1e-6), k
    restored = EMA([net], 0.999)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 4
    legacy = {k: v for k, v in ema.state_dict().items() if k != "updates"}  # a checkpoint from before
    restored.load_state_dict(legacy)
    assert restored.updates >= 10 ** 6, "old checkpoints count as warmed up (plain decay)"
