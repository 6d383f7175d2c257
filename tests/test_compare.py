"""`genlab compare` and the HParams helper, on run directories written by the real training loop.

Runs built once per module: two tiny real GAN runs (one named with HTML-special characters) with
hand-written eval.json / diagnostics.json, a hand-made run evaluated at another n (incomparable),
a run without any evaluation (blanks), and a directory that is not a run (skipped with a warning).
"""
import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser

import pytest
import torch
from typer.testing import CliRunner

from genlab import config as C
from genlab.train import Trainer

WEIRD = "weird<b>&\"'"
SCRIPT_MODEL = "</script><script>alert(1)</script>"
FP = "3f2a9c0d11e5b7a4c6d8e0f1a2b3c4d5"


def _record(timestamp, metrics, **kw):
    """An eval.json record laid out as genlab.eval.evaluate.evaluate() writes it."""
    return {"kind": "samples", "model": "gan", "dataset": "mnist", "checkpoint": "last", "step": 4,
            "metrics": metrics, "extractor": "genlab-mnist", "extractor_fingerprint": FP, "extractor_auto": True,
            "ref_dataset": "mnist", "ref_split": "test", "n_real": 1000, "ref_subset_seed": 0,
            "ref_data_sha256": "0123456789abcdef", "n_fake": 1000, "seed": 0, "n_boot": 200,
            "timestamp": timestamp, "genlab_version": "0.1.0",
            "seconds": {"reference": 1.5, "sample_and_features": 2.25, "metrics": 0.75},
            "reference_cache": "hit", **kw}


EVAL_A = [  # a list of records, newest last (append_record); the newest wins, not the FID of 999
    _record("2025-01-01T10:00:00+00:00", {"fid": 999.0}),
    _record("2025-01-02T10:00:00+00:00", {
        "fid": 41.123456789, "fid_ci_low": 40.5, "fid_ci_high": 41.9, "kid_mean": 0.0312, "kid_std": 0.0021,
        "is_mean": 3.25, "is_std": 0.11, "precision": 0.61, "recall": 0.42, "density": 0.83, "coverage": 0.57},
        precision="bf16 autocast"),  # what it sampled in (genlab eval --precision)
]
NEWEST_A = EVAL_A[1]["metrics"]
EVAL_WEIRD = {  # flat layout, one record
    "fid": 37.5, "kid_mean": 0.0405, "kid_std": 0.003, "is_mean": 3.9, "is_std": 0.2, "precision": 0.55,
    "recall": 0.47, "density": 0.71, "coverage": 0.6, "nll_nats": 95.25, "extractor": "genlab-mnist",
    "extractor_fingerprint": FP, "ref_dataset": "mnist", "ref_split": "test", "n_real": 1000, "n_fake": 1000,
    "seed": 0, "checkpoint": "last", "step": 4}
EVAL_SMALL_N = dict(EVAL_WEIRD, fid=12.0, n_fake=200, n_real=200, nll_nats=None)
DIAG = {  # sections as genlab.eval.modes computes them; a plot beside the file
    "dataset": "mnist", "checkpoint": "last", "step": 4,
    "class_coverage": {"num_classes": 10, "n": 2500, "counts": [250] * 10, "classes_covered": 9,
                       "kl_uniform": 0.21, "confident_rate": 0.8, "confident_threshold": 0.9, "kl_train": 0.2},
    "ndb": {"ndb": 14, "k": 100, "ndb_frac": 0.14, "jsd": 0.031, "alpha": 0.05, "n_real": 2500, "n_fake": 2500,
            "different_bins": [1, 5], "real_props": [0.01] * 100, "fake_props": [0.01] * 100},
    "memorisation": {"near_copy_rate": 0.01, "threshold": 2.5, "quantile": 0.01, "exact_copy_rate": 0.0,
                     "gen_median": 5.0, "test_median": 5.5, "median_ratio": 0.91, "n_gen": 2500, "n_test": 2500},
    "plots": ["diagnostics_classes.png"]}
DIAG_WEIRD = dict(DIAG, class_coverage=dict(DIAG["class_coverage"], classes_covered=10, kl_uniform=0.08),
                  ndb=dict(DIAG["ndb"], ndb=9, jsd=0.02), plots=[])


def _train(root, name, seed=0, extra=()):
    sets = [*extra, f"seed={seed}", "gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8",
            "train.steps=4", "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2", "train.grid_size=4",
            f"out={root}", f"name={name}"]
    cfg = C.resolve("gan", sets=sets)
    Trainer(cfg, root / name, show_progress=False).run()
    return cfg


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.bar(range(10), range(10))
    fig.savefig(path)
    plt.close(fig)


def make_runs(root):
    """The fixture tree under `root/runs` (see the module docstring); returns the run paths."""
    torch.set_num_threads(1)
    runs = root / "runs"
    _train(runs, "gan-a")
    _train(runs, WEIRD, seed=1, extra=["train.amp=off"])  # float32 whatever the family's default
    (runs / "gan-a" / "eval.json").write_text(json.dumps(EVAL_A))
    (runs / "gan-a" / "diagnostics.json").write_text(json.dumps(DIAG))
    _png(runs / "gan-a" / "diagnostics_classes.png")
    (runs / WEIRD / "eval.json").write_text(json.dumps(EVAL_WEIRD))
    (runs / WEIRD / "diagnostics.json").write_text(json.dumps([{"timestamp": 0, "n": 1}, DIAG_WEIRD]))
    small = runs / "small-n"  # hand-made: config + metrics with periodic eval, no checkpoint, other n
    small.mkdir()
    cfg = (runs / "gan-a" / "config.yaml").read_text().replace("model: gan\n", f"model: '{SCRIPT_MODEL}'\n")
    (small / "config.yaml").write_text(cfg)
    (small / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "train/d_loss": 1.0 / s, "train/g_loss": 0.5 + s / 10, "eval/fid": 80.0 / s}) + "\n"
        for s in (1, 2, 3)) + '{"step": 4, "train/d_lo')  # a killed run's partial last line
    (small / "eval.json").write_text(json.dumps(EVAL_SMALL_N))
    bare = runs / "no-eval"  # a copy of a real run, never evaluated
    shutil.copytree(runs / "gan-a", bare)
    for f in ("eval.json", "diagnostics.json", "diagnostics_classes.png"):  # never evaluated
        (bare / f).unlink()
    (runs / "notarun").mkdir()
    (runs / "notarun" / "readme.txt").write_text("not a run")
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("cmp"))


# ------------------------------------------------------------------------------ parsing helpers
class ReportParser(HTMLParser):
    """Collects the metrics table (cells with their attributes), images and script blocks."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.heads, self.rows, self.imgs, self.scripts, self.tags = [], [], [], [], []
        self._cell = self._script = None
        self._in_table = self._in_thead = False
        self.table_tags = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "table" and a.get("id") == "metrics":
            self._in_table = True
        elif self._in_table:
            self.table_tags.append(tag)
            if tag == "thead":
                self._in_thead = True
            elif tag == "tr" and not self._in_thead:
                self.rows.append({"class": a.get("class", ""), "cells": []})
            elif tag in ("th", "td"):
                self._cell = {"attrs": a, "text": ""}
        if tag == "img":
            self.imgs.append(a)
        if tag == "script":
            self._script = {"attrs": a, "text": ""}

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "thead":
            self._in_thead = False
        elif tag in ("th", "td") and self._cell is not None:
            if self._in_thead:
                self.heads.append(self._cell)
            else:
                self.rows[-1]["cells"].append(self._cell)
            self._cell = None
        elif tag == "script" and self._script is not None:
            self.scripts.append(self._script)
            self._script = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._script is not None:
            self._script["text"] += data


def parse_html(text):
    p = ReportParser()
    p.feed(text)
    p.close()
    keys = [h["attrs"]["data-key"] for h in p.heads]
    table = {}
    for row in p.rows:
        if "group-head" in row["class"]:
            continue
        cells = dict(zip(keys, row["cells"]))
        table[cells["run"]["text"]] = cells
    return p, table


def _compare(runs, fmt, **kw):
    from genlab.report.compare import compare

    return compare([runs], None, fmt, **kw)


# ------------------------------------------------------------------------------ formats
def test_html_table_values_equal_eval_json(runs):
    text, _ = _compare(runs, "html")
    p, table = parse_html(text)
    assert set(table) == {"gan-a", WEIRD, "small-n", "no-eval"}
    newest = NEWEST_A
    a = table["gan-a"]
    assert float(a["fid"]["attrs"]["data-value"]) == newest["fid"]  # exact value, not the 999 of the old record
    assert a["fid"]["text"] == format(newest["fid"], ".4g") == "41.12"
    for k in ("kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "density", "coverage",
              "fid_ci_low", "fid_ci_high"):
        assert float(a[k]["attrs"]["data-value"]) == newest[k]
    w = table[WEIRD]
    for k in ("fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "density", "coverage",
              "nll_nats"):
        assert float(w[k]["attrs"]["data-value"]) == EVAL_WEIRD[k], k
    assert a["extractor"]["text"] == "genlab-mnist" and a["n_fake"]["text"] == "1000"
    assert a["ref"]["text"] == "mnist/test" and a["fingerprint"]["attrs"]["title"] == FP
    assert a["model"]["text"] == "gan" and a["dataset"]["text"] == "mnist" and a["steps"]["text"] == "4"
    assert float(a["wall_time_s"]["attrs"]["data-value"]) > 0
    assert float(a["diag.class_coverage.kl_uniform"]["attrs"]["data-value"]) == 0.21
    assert float(w["diag.ndb.ndb"]["attrs"]["data-value"]) == 9  # newest diagnostics record
    assert a["diag_n"]["text"] == "2500"
    # histograms, bookkeeping (timings, n_boot, seeds, thresholds, sample counts) are not metric columns
    for k in ("diag.class_coverage.counts", "diag.ndb.k", "diag.ndb.alpha", "diag.memorisation.threshold",
              "diag.ndb.n_real", "diag.class_coverage.confident_threshold", "seconds_metrics", "n_boot",
              "ref_subset_seed", "diag.step"):
        assert k not in a, k


def test_csv_and_json_equal_eval_json(runs):
    csv_text, _ = _compare(runs, "csv")
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert set(rows) == {"gan-a", WEIRD, "small-n", "no-eval"}
    assert float(rows["gan-a"]["fid"]) == NEWEST_A["fid"]
    assert float(rows[WEIRD]["kid_mean"]) == EVAL_WEIRD["kid_mean"]
    assert rows[WEIRD]["path"].endswith(WEIRD) and rows["small-n"]["model"] == SCRIPT_MODEL
    data = json.loads(_compare(runs, "json")[0])
    by_name = {r["name"]: r for r in data["runs"]}
    for k in ("fid", "kid_mean", "is_mean", "precision", "recall", "density", "coverage", "nll_nats"):
        assert by_name[WEIRD]["values"][k] == EVAL_WEIRD[k]
    assert by_name["gan-a"]["values"]["kid_std"] == 0.0021
    assert by_name["gan-a"]["values"]["n_real"] == 1000 and by_name["gan-a"]["values"]["extractor"] == "genlab-mnist"
    # what each run trained in, from its config.yaml's resolved: section (bf16 where the CPU has it)
    for name in ("gan-a", WEIRD):
        resolved = C.read_yaml(runs / name / "config.yaml")["resolved"]["precision"]
        assert rows[name]["trained_in"] == by_name[name]["values"]["trained_in"] == resolved
    assert rows[WEIRD]["trained_in"] == "float32"
    # and what its newest evaluation sampled in (the record's `precision`, genlab eval --precision); a
    # flat layout's numeric "precision" is the metric, not that
    assert rows["gan-a"]["sampled_in"] == by_name["gan-a"]["values"]["sampled_in"] == "bf16 autocast"
    assert by_name[WEIRD]["values"]["sampled_in"] is None and by_name[WEIRD]["values"]["precision"] == 0.55


def test_markdown_table(runs):
    md, table = _compare(runs, "md")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    n_cols = len(table.columns) + 1
    assert len(lines) == 2 + 4 and all(ln.count(" | ") == n_cols - 1 for ln in lines[2:])
    weird = next(ln for ln in lines if "weird" in ln)
    assert "weird&lt;b&gt;&amp;\"'" in weird and "<b>" not in md  # no raw HTML reaches a Markdown renderer
    assert "**37.5**" in weird  # best FID of group A in bold
    assert "not comparable" in md.lower() or "NOT comparable" in md


def test_missing_metrics_are_blank(runs):
    p, table = parse_html(_compare(runs, "html")[0])
    bare = table["no-eval"]
    for k in ("fid", "kid_mean", "precision", "extractor", "n_fake", "diag.ndb.jsd", "fid_ci_low"):
        assert bare[k]["text"] == "" and bare[k]["attrs"]["data-value"] == "" and "blank" in bare[k]["attrs"]["class"]
    assert table["small-n"]["wall_time_s"]["text"] == ""  # no checkpoint: no wall time, not an error
    assert table["small-n"]["steps"]["text"] == "3"  # from metrics.jsonl, partial last line skipped
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(_compare(runs, "csv")[0]))}
    assert rows["no-eval"]["fid"] == "" and rows["small-n"]["nll_nats"] == ""
    data = json.loads(_compare(runs, "json")[0])
    assert next(r for r in data["runs"] if r["name"] == "no-eval")["values"]["fid"] is None


def test_run_names_and_config_values_are_escaped(runs):
    text, _ = _compare(runs, "html")
    p, table = parse_html(text)
    assert "b" not in p.table_tags  # the run name's <b> is text, not markup
    assert WEIRD in table and table[WEIRD]["run"]["text"] == WEIRD
    assert WEIRD not in text and "weird&lt;b&gt;&amp;&quot;&#x27;" in text
    assert table["small-n"]["model"]["text"] == SCRIPT_MODEL
    assert [s["attrs"].get("type") for s in p.scripts] == ["application/json", None]  # no injected script
    assert text.count("</script>") == 2 and "alert(1)</script>" not in text
    data = json.loads(p.scripts[0]["text"])  # JSON-in-script round-trips
    assert {r["name"] for r in data["runs"]} == {"gan-a", WEIRD, "small-n", "no-eval"}
    assert any(r["values"]["model"] == SCRIPT_MODEL for r in data["runs"])
    assert "alert" not in "".join(s["text"] for s in p.scripts[1:])


def test_best_value_flagged_within_group(runs):
    p, table = parse_html(_compare(runs, "html")[0])
    cls = lambda run, k: table[run][k]["attrs"].get("class", "")  # noqa: E731
    assert "best" in cls(WEIRD, "fid") and "best" not in cls("gan-a", "fid")  # 37.5 < 41.12, lower is better
    assert "best" in cls("gan-a", "kid_mean") and "best" not in cls(WEIRD, "kid_mean")
    assert "best" in cls(WEIRD, "is_mean") and "best" in cls("gan-a", "precision")  # higher is better
    assert "best" in cls(WEIRD, "diag.class_coverage.classes_covered")  # 10 > 9
    assert "best" in cls(WEIRD, "diag.class_coverage.kl_uniform")  # 0.08 < 0.21
    assert "best" not in cls("gan-a", "kid_std") and "best" not in cls(WEIRD, "kid_std")  # no direction
    # small-n has the lowest FID of all, but at n=200: alone in its group, never "best"
    assert "best" not in cls("small-n", "fid")


def test_incomparable_n_is_flagged(runs):
    text, table = _compare(runs, "html")
    groups = {table.runs[i].name: g for g in table.groups for i in g.rows}
    assert groups["gan-a"] is groups[WEIRD]
    assert groups["small-n"] is not groups["gan-a"] and set(groups["small-n"].differs) == {"n_real", "n_fake"}
    assert groups["no-eval"] is not groups["gan-a"] and groups["no-eval"].differs == []  # nothing to compare
    p, html_table = parse_html(text)
    small_row = next(r for r in p.rows if r["cells"] and r["cells"][0]["text"] == "small-n")
    assert "incomparable" in small_row["class"]
    heads = [r["cells"][0]["text"] for r in p.rows if "group-head" in r["class"]]
    assert len(heads) == 3 and any("not comparable" in h and "n_fake" in h for h in heads)
    assert "n_fake 200" in " ".join(heads) and "n_fake 1,000" in " ".join(heads)
    data = json.loads(_compare(runs, "json")[0])
    assert {r["name"]: r["group"] for r in data["runs"]}["small-n"] != {r["name"]: r["group"] for r in data["runs"]}["gan-a"]


def test_sort_within_groups(runs):
    from genlab.errors import GenlabError

    _, table = _compare(runs, "json", sort="FID")
    first = table.groups[0]
    assert [table.runs[i].name for i in first.rows] == [WEIRD, "gan-a"]  # ascending FID
    _, table = _compare(runs, "json", sort="precision")
    assert [table.runs[i].name for i in table.groups[0].rows] == ["gan-a", WEIRD]  # higher first
    _, table = _compare(runs, "json", sort="kid")  # unambiguous prefix of kid_mean
    assert [table.runs[i].name for i in table.groups[0].rows] == ["gan-a", WEIRD]
    with pytest.raises(GenlabError, match="cannot sort by 'nonsense'"):
        _compare(runs, "json", sort="nonsense")


def test_html_is_self_contained_with_curves_samples_and_plots(runs):
    text, table = _compare(runs, "html")
    p, _ = parse_html(text)
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert all(img["src"].startswith("data:image/png;base64,") for img in p.imgs)
    for img in p.imgs:
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    alts = [img["alt"] for img in p.imgs]
    assert sum(a.startswith("training curves") for a in alts) == 1
    assert sorted(a for a in alts if a.startswith("samples of")) == sorted(
        f"samples of {n}" for n in ("gan-a", WEIRD, "no-eval"))  # small-n wrote no samples
    assert [a for a in alts if "diagnostics_classes" in a] == ["diagnostics_classes of gan-a"]
    assert table.runs[0].sample.name == "step-4.png"  # the latest grid, not step-2


def test_curve_panels_are_shared_across_runs(runs):
    from genlab.logger import read_metrics
    from genlab.report.curves import curve_keys, curves_figure

    hists = [read_metrics(runs / n) for n in ("gan-a", "small-n")]
    keys = curve_keys(hists)
    assert keys[0] == "eval/fid" and "train/g_loss" in keys and "train/images_per_sec" not in keys
    fig = curves_figure([("gan-a", hists[0]), ("a $x$ run", hists[1])])
    ax = fig.axes[keys.index("train/d_loss")]
    assert len(ax.lines) == 2  # both runs on the same axes
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_cli_globs_parents_and_warnings(runs, tmp_path):
    import genlab.cli  # noqa: F401
    import genlab.cli_compare  # noqa: F401  (the lead adds it to cli.py's import line)
    from genlab.cli import app

    runner = CliRunner()
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["compare", str(runs / "*"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "warning: skipped" in res.stderr and "notarun" in res.stderr
    assert "wrote" in res.stdout and "4 runs" in res.stdout
    _, by_glob = parse_html(out.read_text())
    res = runner.invoke(app, ["compare", str(runs), "--out", str(tmp_path / "r.csv")])  # parent directory
    assert res.exit_code == 0, res.output
    assert "notarun" in res.stderr
    assert {r["run"] for r in csv.DictReader(open(tmp_path / "r.csv"))} == set(by_glob)  # format from suffix
    res = runner.invoke(app, ["compare", str(runs / "gan-*"), str(runs / "gan-a"), "--format", "json", "--out", "-"])
    assert res.exit_code == 0 and [r["name"] for r in json.loads(res.stdout)["runs"]] == ["gan-a"]  # deduplicated
    res = runner.invoke(app, ["compare", str(runs / "notarun")])
    assert res.exit_code == 2 and "no genlab run directories" in res.stderr
    res = runner.invoke(app, ["compare", str(runs), "--format", "pdf", "--out", "-"])
    assert res.exit_code == 2 and "unknown --format" in res.stderr


# ------------------------------------------------------------------------------ readers
def test_tolerant_readers():
    from genlab.report.runs_table import direction, flatten, newest_record

    assert newest_record([{"timestamp": 5, "a": 1}, {"timestamp": 3, "a": 2}]) == {"timestamp": 5, "a": 1}
    assert newest_record([{"a": 1}, {"a": 2}]) == {"a": 2}  # no stamps: the last one
    assert newest_record({"a": 1}) == {"a": 1} and newest_record(None) == {} and newest_record([]) == {}
    assert flatten({"kid": {"mean": 1, "std": 2}, "h": [1, 2], "p": ["x.png"]}) == \
        {"kid.mean": 1, "kid.std": 2, "p": ["x.png"]}
    assert direction("fid") == "lower" and direction("coverage") == "higher" and direction("kid_std") is None
    assert direction("class_coverage.kl_uniform") == "lower" and direction("modes_captured") == "higher"
    assert direction("ndb.ndb") == "lower" and direction("ndb.ndb_frac") == "lower" and direction("bits_per_dim") == "lower"
    assert direction("mixture.modes") == "higher" and direction("mixture.reverse_kl") == "lower"
    assert direction("mixture.num_modes") is None and direction("class_coverage.confident_rate") == "higher"
    assert direction("memorisation.near_copy_rate") == "lower" and direction("memorisation.gen_median") is None
    assert direction("hq_rate") == "higher" and direction("modes_total") is None


def test_corrupt_json_is_a_warning_not_an_error(runs, tmp_path):
    from genlab.report.compare import compare

    broken = tmp_path / "broken"
    shutil.copytree(runs / "no-eval", broken)
    (broken / "eval.json").write_text('{"fid": 1')
    _, table = compare([broken], None, "csv")
    assert table.runs[0].values.get("fid") is None
    assert any("unreadable JSON" in w for w in table.warnings)


# ------------------------------------------------------------------------------ hparams
def test_log_hparams_writes_session_and_final_metrics(runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    from genlab.report.hparams import hparam_dict, log_hparams

    run = tmp_path / "hp-run"
    shutil.copytree(runs / "gan-a", run)
    cfg = C.load_run_config(run)
    assert hparam_dict(cfg)["gan.latent_dim"] == 8 and "out" not in hparam_dict(cfg)
    assert hparam_dict(cfg)["gan.g_optim.betas"] == "[0.5, 0.999]"
    log_hparams(run, cfg, {"step": 4, "d_loss": 1.25, "g_loss": 0.75, "run_dir": str(run)})
    log_hparams(run, cfg, {"fid": 41.5, "kid": {"mean": 0.03, "std": 0.001}, "nll": float("nan")}, step=4)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tb"))  # the trainer may pass its own open writer
    log_hparams(run, cfg, {"extra": 2.0}, step=4, writer=writer)
    writer.add_scalar("after/still_open", 1.0, 5)
    writer.close()
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    content = ea.PluginTagToContent(metadata.PLUGIN_NAME)
    assert metadata.SESSION_START_INFO_TAG in content
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["gan.latent_dim"].number_value == 8
    assert start.hparams["model"].string_value == "gan" and start.hparams["train.steps"].number_value == 4
    scalars = ea.Tags()["scalars"]
    for tag in ("final/fid", "final/kid_mean", "final/d_loss", "train/g_loss", "final/extra", "after/still_open"):
        assert tag in scalars, tag
    assert "final/nll" not in scalars and "final/step" not in scalars  # NaN and bookkeeping left out
    assert ea.Scalars("final/fid")[-1].value == pytest.approx(41.5) and ea.Scalars("final/fid")[-1].step == 4


def test_infinite_kl_counts_as_worst(runs, tmp_path):
    from genlab.report.compare import compare

    for name, kl, modes in (("collapsed", "Infinity", 1), ("spread", "1.2", 3)):
        shutil.copytree(runs / "no-eval", tmp_path / name)
        (tmp_path / name / "diagnostics.json").write_text(  # json.dumps writes inf as Infinity
            f'{{"n": 2500, "mixture": {{"modes": {modes}, "num_modes": 8, "reverse_kl": {kl}}}}}')
    text, table = compare([tmp_path / "collapsed", tmp_path / "spread"], None, "html", sort="reverse_kl")
    assert [table.runs[i].name for i in table.groups[0].rows] == ["spread", "collapsed"]
    _, cells = parse_html(text)
    assert "best" in cells["spread"]["diag.mixture.reverse_kl"]["attrs"]["class"]
    assert cells["collapsed"]["diag.mixture.reverse_kl"]["text"] == "inf"
    assert cells["collapsed"]["diag.mixture.reverse_kl"]["attrs"]["data-value"] == "Infinity"
    data = json.loads(compare([tmp_path / "collapsed"], None, "json")[0])  # strict JSON: inf -> null
    assert data["runs"][0]["values"]["diag.mixture.reverse_kl"] is None


def test_binarized_data_is_its_own_comparability_group(runs, tmp_path):
    from genlab.report.compare import compare

    binar = tmp_path / "binarized"  # same eval record as gan-a, but the model saw binarized MNIST
    shutil.copytree(runs / "gan-a", binar)
    cfg = (binar / "config.yaml").read_text()
    assert "binarize: false" in cfg
    (binar / "config.yaml").write_text(cfg.replace("binarize: false", "binarize: true"))
    _, table = compare([str(runs / "gan-a"), str(binar)], None, "json")
    groups = {table.runs[i].name: g for g in table.groups for i in g.rows}
    assert groups["binarized"] is not groups["gan-a"] and groups["binarized"].differs == ["dataset"]
    assert "mnist (binarized)" in groups["binarized"].label


def test_every_registered_figure_is_ranked_by_its_declared_direction(tmp_path):
    """Over the measure registry: two runs differ in every genlab figure; the best cell is the one the
    figure's direction says (lower / higher / closest to target), and info figures are never ranked."""
    from genlab.eval.measures import figures
    from genlab.report.runs_table import build_table

    def write(run, a: bool):
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("model: gan\nfamily: gan\ndata: {name: mnist}\n")
        ev = {f.key: _pick(f, a) for f in figures("eval")}
        (run / "eval.json").write_text(json.dumps([_record("2025-01-01T00:00:00+00:00", ev)]))
        diag: dict = {}
        for f in figures("diagnose"):
            section, leaf = f.key.split(".")
            diag.setdefault(section, {})[leaf] = _pick(f, a)
        (run / "diagnostics.json").write_text(json.dumps([{"kind": "diagnostics", "n": 100, "diagnostics": diag}]))

    def _pick(f, a):  # run "a" is the better one for every ranked figure
        if f.direction == "target":
            return f.target + (0.1 if a else 0.5)
        good, bad = (1.0, 2.0) if f.direction == "lower" else (2.0, 1.0)
        return good if a else bad

    write(tmp_path / "a", True)
    write(tmp_path / "b", False)
    table = build_table([tmp_path / "a", tmp_path / "b"])
    cols = {c.key: c for c in table.columns}
    for f in figures("eval") + figures("diagnose"):
        key = f.key if f in figures("eval") else f"diag.{f.key}"
        assert key in cols, f"{key} has no column"
        assert cols[key].figure is f and cols[key].label
        if f.direction == "info":
            assert cols[key].better is None and not table.is_best(0, key) and not table.is_best(1, key)
        else:
            assert cols[key].better == f.direction
            assert table.is_best(0, key) and not table.is_best(1, key), key
