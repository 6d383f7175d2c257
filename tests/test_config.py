import pytest

from genlab import config as C
from genlab.registry import RegistryError, available, get


def test_defaults_come_from_dataclasses_and_model_yaml():
    cfg = C.resolve("wgan-gp")
    assert cfg.model == "wgan-gp" and cfg.family == "gan"
    assert cfg.options.n_critic == 5
    assert cfg.options.loss == "wasserstein"
    assert cfg.options.g_optim.betas == (0.0, 0.9)
    assert cfg.options.regularizers == [{"name": "gradient_penalty", "weight": 10}]
    assert cfg.train.log_every == C.TrainConfig().log_every  # untouched keys keep dataclass defaults


def test_set_overrides_with_type_coercion():
    cfg = C.resolve("gan", sets=["gan.n_critic=3", "train.ema_decay=0.9", "gan.g_optim.lr=1", "data.name=ring8"])
    assert cfg.options.n_critic == 3
    assert cfg.train.ema_decay == 0.9
    assert isinstance(cfg.options.g_optim.lr, float) and cfg.options.g_optim.lr == 1.0
    assert cfg.data.name == "ring8"


def test_unknown_key_names_valid_keys():
    with pytest.raises(C.ConfigError) as e:
        C.resolve("gan", sets=["train.stepz=3"])
    assert "train.stepz" in str(e.value) and "steps" in str(e.value)
    with pytest.raises(C.ConfigError, match="gan.n_critc"):
        C.resolve("gan", sets=["gan.n_critc=3"])


def test_wrong_types_are_rejected():
    with pytest.raises(C.ConfigError, match="train.steps"):
        C.resolve("gan", sets=["train.steps=abc"])
    with pytest.raises(C.ConfigError, match="expected 2 values"):
        C.resolve("gan", sets=["gan.g_optim.betas=[0.5]"])
    with pytest.raises(C.ConfigError, match="expected bool"):
        C.resolve("gan", sets=["gan.spectral_norm=3"])


def test_bad_set_syntax_and_config_files(tmp_path):
    with pytest.raises(C.ConfigError, match="key=value"):
        C.resolve("gan", sets=["train.steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.resolve("gan", config_file=str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trian: {steps: 3}\n")
    with pytest.raises(C.ConfigError, match="trian"):
        C.resolve("gan", config_file=str(unknown))


def test_config_file_layer_and_round_trip(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("train: {steps: 7}\ngan: {d_width: 8}\n")
    cfg = C.resolve("wgan-gp", config_file=str(f), sets=["train.steps=9"])
    assert cfg.train.steps == 9 and cfg.options.d_width == 8
    (tmp_path / "config.yaml").write_text(C.dump(cfg))
    again = C.load_run_config(tmp_path)
    assert again.to_dict() == cfg.to_dict()


def test_unknown_model_has_did_you_mean():
    with pytest.raises(RegistryError, match="did you mean 'wgan-gp'"):
        C.resolve("wgan-pg")


def test_registry_lists_models_and_dispatches():
    assert {"gan", "wgan-gp"} <= set(available("model"))
    assert get("loss", "wasserstein") is not None
    with pytest.raises(RegistryError, match="hinge"):
        get("loss", "hing")


def test_per_dataset_deltas_apply_only_to_that_dataset():
    toy = C.resolve("wgan-gp", overrides={"data": {"name": "ring8"}})
    assert toy.options.latent_dim == 2 and toy.options.regularizers[0]["weight"] == 0.1
    mnist = C.resolve("wgan-gp")
    assert mnist.options.latent_dim == 100 and mnist.options.regularizers[0]["weight"] == 10
    # --set still wins over the per-dataset section
    toy = C.resolve("wgan-gp", overrides={"data": {"name": "ring8"}}, sets=["gan.latent_dim=4"])
    assert toy.options.latent_dim == 4


def test_exponent_floats_from_the_command_line():
    assert C.resolve("gan", sets=["gan.g_optim.lr=1e-3"]).options.g_optim.lr == 1e-3


def test_saved_configs_drop_retired_keys_but_user_configs_do_not(tmp_path, monkeypatch):
    # train.compile was retired once and is back; the mechanism is shown on a made-up retired key
    monkeypatch.setattr(C, "RETIRED_KEYS", {("train", "old_option")})
    saved = C.resolve("gan").to_dict()
    saved["train"]["old_option"] = False  # written by a genlab version that had train.old_option
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.yaml").write_text(__import__("yaml").safe_dump(saved))
    assert C.load_run_config(run).train.steps == saved["train"]["steps"]
    assert saved["train"]["old_option"] is False  # saved_layer copies, it does not edit its input
    with pytest.raises(C.ConfigError, match="train.old_option"):
        C.resolve("gan", sets=["train.old_option=false"])


def test_old_boolean_amp_values_still_load():
    # runs written before train.amp took off | bf16 | fp16 saved `amp: false`; YAML also reads `off` as false
    assert C.resolve("gan", sets=["train.amp=false"]).train.amp == "off"
    assert C.resolve("gan", sets=["train.amp=off"]).train.amp == "off"
    assert C.resolve("gan", sets=["train.amp=true"]).train.amp == "bf16"
    with pytest.raises(C.ConfigError, match="train.amp = 'fp32' is not allowed"):
        C.resolve("gan", sets=["train.amp=fp32"])


def test_set_on_a_mapping_merges_with_the_model_file():
    cfg = C.resolve("ebgan", sets=["gan.loss_args.pt_weight=0"])
    assert cfg.options.loss_args == {"margin": 1.0, "pt_weight": 0}
    cfg = C.resolve("lsgan", sets=["gan.loss_args.c=0.5"])
    assert cfg.options.loss_args == {"a": 0.0, "b": 1.0, "c": 0.5}
