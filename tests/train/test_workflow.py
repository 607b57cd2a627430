"""`faultwatch train ...` end to end on a tiny budget: the run folder holds what export needs."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from train.cli import app
from train.config import ConfigError, load_config

runner = CliRunner()
TINY = [
    "labels_per_class=4",
    "unlabeled_windows=60",
    "sim_seconds_per_record=1.0",
    "window=512",
    "hop=256",
    "width=0.25",
    "embedding_dim=16",
    "projection_dims=[32, 16]",
    "batch_size=16",
    "steps_per_epoch=3",
    "probe_epochs=2",
    "finetune_epochs=1",
    "finetune_steps_per_epoch=2",
    "supervised_epochs=1",
    "pseudo_rounds=1",
]


def tiny_args(tmp_path, *extra: str) -> list[str]:
    args = []
    for item in [*TINY, f"out_dir='{tmp_path}'", *extra]:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    result = runner.invoke(
        app, ["run", "--quiet", "--epochs", "1", "--run-name", "tiny", *tiny_args(tmp)]
    )
    assert result.exit_code == 0, result.output
    return tmp / "tiny"


def test_run_writes_checkpoint_report_and_split(run_dir):
    for name in (
        "finetuned.pt",
        "pretrained.pt",
        "calibration.npz",
        "heldout.npz",
        "split.json",
        "metrics.json",
        "report.md",
        "embeddings_before_finetune.png",
        "loss_curves.png",
        "confusion.png",
    ):
        assert (run_dir / name).is_file(), name
    state = torch.load(run_dir / "finetuned.pt", weights_only=False)
    assert state["class_names"] == ["normal", "inner_race", "outer_race", "ball"]
    assert state["open_set"]["unknown_above"] > 0 and state["open_set"]["quantile"] == 0.99
    assert state["preprocess"]["window"] == 512 and state["head"]["w1"].shape == (16, 64)
    assert state["encoder"] == {
        "name": "cnn",
        "kwargs": {"embedding_dim": 16, "norm": "batch", "width": 0.25},
    }
    spectral = state["spectral_report"]  # the simulator's pool: other machines
    assert state["spectral"] is None and spectral["domain_gap"] > 0.90, spectral
    split = json.loads((run_dir / "split.json").read_text())
    assert split["scheme"].startswith("by record") and split["counts"]["labeled"]["ball"] == 4
    report = (run_dir / "report.md").read_text()
    for method in (
        "SimCLR + fine-tune",
        "supervised only",
        "pseudo-labeling",
        "kNN on SimCLR embeddings",
        "spectral template (linear)",
    ):
        assert method in report
    assert "spectral template (where the pool looks like the labeled machine): **not used**" in (
        report
    )
    selection = json.loads((run_dir / "metrics.json").read_text())["pretrain_selection"]
    assert selection["best_epoch"] == 1 and len(selection["scores"]) == 1  # one epoch trained
    assert "## Pretraining epoch kept\n\nepoch 1 of the 1 trained" in report
    with np.load(run_dir / "heldout.npz") as held:
        assert held["x"].shape[1:] == (1, 512) and len(held["x"]) == len(held["y"])


def test_numpy_head_in_checkpoint_reproduces_torch_probabilities(run_dir):
    from edge_agent.pipeline.head import Head
    from train.loop import embed, load_encoder

    state = torch.load(run_dir / "finetuned.pt", weights_only=False)
    head = Head(
        **{k: v for k, v in state["head"].items() if k != "temperature"},
        temperature=float(state["head"]["temperature"]),
    )
    with np.load(run_dir / "heldout.npz") as held:
        x, y = held["x"], held["y"]
    probs = head.probabilities(embed(load_encoder(run_dir / "finetuned.pt"), x))
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]["SimCLR + fine-tune"]
    assert abs(float((probs.argmax(1) == y).mean()) - metrics["accuracy"]) < 1e-6
    assert 0 <= metrics["ece"] <= 1 and "confident_accuracy" in metrics  # evaluate()'s calibration


def test_evaluate_command_reads_the_run(run_dir):
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "macro-F1" in result.output


def test_pretraining_resumes_where_it_stopped(tmp_path):
    args = ["pretrain", "--quiet", "--run-name", "r", *tiny_args(tmp_path)]
    once = runner.invoke(app, [*args, "--epochs", "1"])
    assert once.exit_code == 0 and "kept epoch 1 of 1, monitor" in " ".join(once.output.split())
    first = torch.load(tmp_path / "r" / "pretrained.pt", weights_only=False)
    assert first["step"] == 3
    result = runner.invoke(app, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    second = torch.load(tmp_path / "r" / "pretrained.pt", weights_only=False)
    assert second["step"] == 6 and len(second["history"]) == 6
    assert [h["step"] for h in second["history"][:3]] == [h["step"] for h in first["history"]]


def test_unknown_field_and_bad_value_name_the_field(tmp_path):
    result = runner.invoke(app, ["run", "--set", "epochz=3"])
    assert result.exit_code == 1 and "epochz" in result.output
    with pytest.raises(ConfigError, match="temperature"):
        load_config(None, ["temperature=-1"])
    with pytest.raises(ConfigError, match="aug_k_min"):
        load_config(None, ["aug_k_min=3", "aug_k_max=2"])
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_missing_cwru_data_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app, ["run", "--quiet", "--data", "cwru-4class", "--set", f"data_root='{tmp_path}'"]
    )
    assert result.exit_code == 1
    assert "cwru" in result.output.lower()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "pretrain", "finetune", "baseline", "evaluate"):
        assert cmd in result.output


def test_run_help_names_every_data_set():
    from typing import get_args

    from train.config import DataName

    result = runner.invoke(app, ["run", "--help"], terminal_width=400)
    assert result.exit_code == 0
    said = " ".join(result.output.split())
    for name in get_args(DataName):
        assert name in said, name


def test_pool_larger_than_memory_streams_from_shards(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,sample_rate_hz"]
    for i in range(3):
        np.save(tmp_path / f"rec{i}.npy", rng.normal(size=6000).astype(np.float32))
        rows.append(f"rec{i}.npy,12000")
    manifest = tmp_path / "pool.csv"
    manifest.write_text("\n".join(rows) + "\n")
    shards = tmp_path / "shards"
    result = runner.invoke(
        app,
        [
            "shards",
            "--manifest",
            str(manifest),
            "--out",
            str(shards),
            "--shard-size",
            "8",
            "--set",
            "window=512",
            "--set",
            "hop=256",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "66 windows in 9 shards" in result.output  # 3 x (1 + (6000 - 512) // 256)
    from train.data import build_split
    from train.shards import ShardPool

    cfg = load_config(None, [*TINY, f"pool_shards='{shards}'"])
    split = build_split(cfg)
    assert isinstance(split.pool, ShardPool) and len(split.pool) == 66
    assert isinstance(split.pool.shards.shard(0), np.memmap)
    args = [
        "pretrain",
        "--quiet",
        "--run-name",
        "sh",
        "--epochs",
        "1",
        *tiny_args(tmp_path, f"pool_shards='{shards}'"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "sh" / "pretrained.pt", weights_only=False)["step"] == 3


def test_multi_head_run_saves_task_heads_and_reports_them(tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "--quiet",
            "--epochs",
            "1",
            "--run-name",
            "mh",
            *tiny_args(tmp_path, "multi_head=true"),
        ],
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "mh" / "finetuned.pt", weights_only=False)
    assert state["task_heads"]["detection"]["classes"] == ["normal", "fault"]
    assert state["task_heads"]["detection"]["flat_to_task"] == [0, 1, 1, 1]
    metrics = json.loads((tmp_path / "mh" / "metrics.json").read_text())
    assert metrics["test"]["SimCLR + fine-tune"]["tasks"]["detection"]["head"]["n"] > 0
    assert "Multi-head tasks" in (tmp_path / "mh" / "report.md").read_text()


def test_the_report_says_which_pool_windows_a_fused_template_learned_from() -> None:
    from train.report import views_section

    fused = {
        "used": True,
        "reason": "domain gap 0.500: passed the gate",
        "envelope_labels": {"inner_race": 100, "outer_race": 37},
        "pool_labels": {"plain": {"normal": 100, "ball": 3}, "ranked": {}},
    }
    line = views_section({"spectral": fused})[2]
    assert "**fused**, domain gap 0.500" in line
    assert "by a clear defect line inner_race 100, outer_race 37" in line
    assert "plain view normal 100, ball 3; ranked view none" in line
    assert "by the model" not in line
    vouched = views_section({"spectral": {**fused, "vouched_labels": {"outer_race": 185}}})[2]
    assert "by the model where the lines side with it: outer_race 185" in vouched
    refused = {"used": False, "reason": "domain gap 0.990 > 0.90", "envelope_labels": {}}
    assert "pool windows" not in views_section({"spectral": refused})[2]
