"""`python -m bench fewlabel`: the zero-label envelope row, ranks, worst seeds, task selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import fewlabel
from edge_agent.physics.bearing_sim import SKF_6205
from train.config import load_config
from train.loop import initial_encoder
from train.mfpt import MFPT_GEOMETRY
from train.records import Record
from train.scenarios import lab_records
from train.workflow import SPECTRAL

# a pretraining and fine-tunes that finish in seconds
TINY_RUN = ["epochs=1", "labels_per_class=4", "unlabeled_windows=60", "window=512", "hop=256",
            "sim_seconds_per_record=1.0", "probe_epochs=2", "finetune_epochs=1"]  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> list[Record]:
    """One short simulated lab record per class (1500 rpm, clear faults), rpm in meta."""
    return lab_records(1, 1.5, seed=0)


def test_envelope_names_the_fault_of_a_clear_record_and_normal_when_no_line(lab):
    for record in lab:
        labels = fewlabel.envelope_labels(record, SKF_6205, hop=2048)
        assert len(labels) == 1 + (record.signal.shape[0] - fewlabel.ENVELOPE_WINDOW) // 2048
        majority = max(set(labels), key=labels.count)
        assert majority == record.label, (record.label, labels)


def test_envelope_estimates_speed_when_the_record_does_not_carry_it(lab):
    inner = next(r for r in lab if r.label == "inner_race")
    blind = Record(inner.record_id, inner.signal, inner.sample_rate_hz, inner.label, {})
    assert fewlabel.shaft_hz_of(blind) == pytest.approx(inner.meta["rpm"] / 60, rel=0.01)
    assert fewlabel.envelope_labels(blind, SKF_6205, 2048) == fewlabel.envelope_labels(
        inner, SKF_6205, 2048
    )


def test_envelope_baseline_scores_location_macro_f1_on_size_labels_too(lab):
    result = fewlabel.envelope_baseline(lab, SKF_6205, hop=2048)
    assert result["scored_on"] == "location" and result["uncertain_rate"] is None
    assert result["macro_f1"] >= 0.8
    sized = [
        Record(r.record_id, r.signal, r.sample_rate_hz, r.label + ("_014" * (r.label != "normal")))
        for r in lab
    ]
    assert fewlabel.envelope_baseline(sized, SKF_6205, 2048)["macro_f1"] == pytest.approx(
        fewlabel.envelope_baseline(
            [Record(r.record_id, r.signal, r.sample_rate_hz, r.label) for r in lab], SKF_6205, 2048
        )["macro_f1"]
    )
    with pytest.raises(ValueError, match="4096-sample window"):
        fewlabel.envelope_baseline(
            [Record("short", np.ones(100, np.float32), 12_000, "normal")], SKF_6205, 2048
        )


def test_summary_gives_worst_seed_and_rank_with_ties_shared():
    def seed(a: float, b: float, c: float) -> dict:
        return {
            m: {"macro_f1": v, "accuracy": v, "uncertain_rate": 0.0}
            for m, v in (("A", a), ("B", b), ("C", c))
        }

    summary = fewlabel.summarize({"t": [seed(0.9, 1.0, 0.5), seed(0.7, 0.6, 0.5)]})["t"]
    assert summary["A"]["macro_f1_worst"] == pytest.approx(0.7)
    assert summary["B"]["macro_f1_worst"] == pytest.approx(0.6)
    assert [summary[m]["rank"] for m in "ABC"] == [1, 1, 3]  # A and B both average 0.8


def test_the_model_alone_row_is_not_ranked_and_view_use_is_counted():
    def seed(recipe: float, alone: float, used: bool) -> dict:
        row = {"accuracy": 0.0, "uncertain_rate": 0.0}
        views = {"physics_used": used, "spectral_used": not used}
        return {
            fewlabel.RECIPE: {**row, "macro_f1": recipe, **views},
            fewlabel.MODEL_ALONE: {**row, "macro_f1": alone},
            "supervised only": {**row, "macro_f1": 0.8},
        }

    summary = fewlabel.summarize({"t": [seed(1.0, 0.5, True), seed(0.9, 0.9, False)]})["t"]
    assert summary[fewlabel.RECIPE]["rank"] == 1 and summary["supervised only"]["rank"] == 2
    assert summary[fewlabel.MODEL_ALONE]["rank"] is None
    assert summary[fewlabel.RECIPE]["physics_used_seeds"] == 1
    assert summary[fewlabel.RECIPE]["spectral_used_seeds"] == 1


def test_the_pretrainings_gain_is_paired_per_seed_with_ties_and_missing_rows():
    def seed(recipe: float, never: float | None, alone: float = 0.5) -> dict:
        row = {"accuracy": 0.0, "uncertain_rate": 0.0}
        rows = {
            fewlabel.RECIPE: {**row, "macro_f1": recipe},
            fewlabel.MODEL_ALONE: {**row, "macro_f1": alone},
        }
        if never is not None:
            rows[fewlabel.UNPRETRAINED] = {**row, "macro_f1": never}
        return rows

    seeds = [seed(0.99, 0.90), seed(0.95, 0.96), seed(0.80, 0.802), seed(0.10, None)]
    gain = fewlabel.pretraining_gain(seeds, fewlabel.RECIPE, fewlabel.UNPRETRAINED)
    assert gain["mean"] == pytest.approx((0.09 - 0.01 - 0.002) / 3)  # the unpaired seed is out
    assert gain["worst_seed"] == pytest.approx(0.80 - 0.802)
    assert (gain["gained"], gain["tied"], gain["lost"]) == (1, 1, 1)
    (parts,) = fewlabel.pretraining_gains({"t": seeds}).values()
    assert set(parts) == {"the recipe"}  # no seed ran the model alone never pretrained
    assert fewlabel.pretraining_gains({"t": [seed(0.9, None)]}) == {}


def test_task_selection_by_group_data_or_name():
    assert fewlabel.select_tasks("all") == list(fewlabel.TASKS)
    chosen = fewlabel.select_tasks("cwru-unseen-bearing,cwru-crossload-3to0,lolo")
    assert [fewlabel.TASKS[t][0] for t in chosen] == [
        "cwru-unseen-bearing",
        "cwru-crossload-3to0",
        *(f"cwru-lolo-{k}" for k in range(4)),
    ]
    by_name = fewlabel.select_tasks("cwru 4-class, 5/class,cwru-crossload, sim")
    assert by_name == [
        "cwru 4-class, 5/class",
        "cwru cross-load 0->3, 50/class",
        "sim-reference (200 labels)",
    ]
    with pytest.raises(ValueError, match=r"unknown task 'cwru-lol'.*valid: sim, cwru"):
        fewlabel.select_tasks("cwru-lol")


def test_unseen_bearing_pretrains_on_its_own_pool_and_targets_are_registered():
    base = load_config(None, None, pretrain_monitor=False)
    groups = {fewlabel.pretrain_group(base, t) for t in fewlabel.GROUPS["cwru"]}
    assert len(groups) == 2  # every record; every record but the 0.014 in ones
    unseen = 'cwru unseen bearing (0.014" held out), 50/class'
    assert fewlabel.pretrain_group(base, unseen) != fewlabel.pretrain_group(
        base, "cwru cross-load 3->0, 50/class"
    )
    assert fewlabel.TARGETS[unseen] == 0.90
    assert fewlabel.TARGETS["cwru cross-load 3->0, 50/class"] == 0.98
    assert fewlabel.TARGETS["cwru cross-load 0->3, 50/class"] == 0.98


@pytest.mark.parametrize("uses_labels", [{"loss": "supcon"}, {"pretrain_monitor": True}])
def test_a_pretraining_that_uses_labels_serves_its_own_task_only(uses_labels):
    # SupCon trains on the labels, the monitor picks the epoch with them: a cross-load task's
    # encoder must not be chosen with the labels of the loads it is tested on
    base = load_config(None, None, **uses_labels)
    cwru = fewlabel.GROUPS["cwru"]
    assert len({fewlabel.pretrain_group(base, t) for t in cwru}) == len(cwru)


def test_cheap_only_runs_the_untrained_rows_on_every_seed_without_pretraining(tmp_path, capsys):
    out = tmp_path / "fewlabel.json"
    small = [
        "labels_per_class=4",
        "unlabeled_windows=20",
        "sim_seconds_per_record=1.0",
        "window=512",
        "hop=256",
    ]
    args = ["--tasks", "sim", "--seeds", "2", "--cheap-only", "--out", str(out)]
    assert fewlabel.main([*args, *(a for s in small for a in ("--set", s))]) == 0
    result = json.loads(out.read_text())
    assert not any(key.startswith("pretrain") for key in result["seconds"])
    (task,) = result["summary"]
    rows = result["summary"][task]
    assert set(rows) == {SPECTRAL, fewlabel.ENVELOPE}
    template = rows[SPECTRAL]
    assert template["seeds"] == 2 and 0 <= template["macro_f1_mean"] <= 1
    assert template["ece_mean"] is not None
    assert "spectral template" in capsys.readouterr().out


def test_mfpt_tasks_run_where_the_clone_is_and_are_skipped_with_a_hint_where_not(tmp_path, capsys):
    from tests.train.test_mfpt import write_clone

    root = write_clone(tmp_path / "data")
    out = tmp_path / "fewlabel.json"
    args = ["--tasks", "mfpt", "--seeds", "1", "--cheap-only"]
    assert fewlabel.main([*args, "--out", str(out), "--set", f"data_root={root}"]) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) == set(fewlabel.GROUPS["mfpt"]) and len(result["summary"]) == 3
    for task, rows in result["summary"].items():
        assert fewlabel.ENVELOPE in rows and SPECTRAL in rows, task
        assert result["tasks"][task]["data"].startswith("mfpt")
    mfpt_task = fewlabel.task_config(load_config(None, None), "mfpt-2class", 5, 0)
    assert fewlabel.machine_geometry(mfpt_task) == MFPT_GEOMETRY
    assert not mfpt_task.physics
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    nowhere = ["--out", str(tmp_path / "none.json"), "--set", f"data_root={empty}"]
    assert fewlabel.main([*args, *nowhere]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"skipping MFPT tasks: {empty / 'mfpt'} not found (clone" in said


def test_a_row_missing_on_some_seeds_is_summarized_over_the_seeds_it_has():
    row = {"accuracy": 0.5, "uncertain_rate": 0.0}
    seeds = [
        {"A": {**row, "macro_f1": 0.9}, "B": {**row, "macro_f1": 0.5}},
        {"A": {**row, "macro_f1": 0.7}},  # B's gate kept it out on this seed
    ]
    summary = fewlabel.summarize({"t": seeds})["t"]
    assert summary["B"]["seeds"] == 1 and summary["B"]["macro_f1_mean"] == pytest.approx(0.5)
    assert summary["A"]["seeds"] == 2 and summary["A"]["macro_f1_mean"] == pytest.approx(0.8)


def test_cheap_only_scores_the_recipes_template_without_the_model_on_real_cwru(tmp_path):
    from train.cwru import default_data_root

    if not (default_data_root() / "cwru" / "12k_DE").is_dir():
        pytest.skip(f"real CWRU records not found under {default_data_root() / 'cwru'}")
    out = tmp_path / "fewlabel.json"
    args = ["--tasks", "cwru-10class", "--seeds", "1", "--cheap-only", "--out", str(out)]
    assert fewlabel.main(args) == 0
    rows = json.loads(out.read_text())["summary"]["cwru 10-class, 5/class"]
    assert set(rows) == {fewlabel.FUSED_TEMPLATE, SPECTRAL, fewlabel.ENVELOPE}
    assert rows[fewlabel.FUSED_TEMPLATE]["macro_f1_mean"] >= 0.95  # 0.999 over 5 seeds


def test_the_ablation_fine_tunes_the_recipe_from_an_encoder_that_never_pretrained(
    tmp_path, monkeypatch
):
    """Two fine-tunes per task: the first from the pretrained encoder, the second from the
    seed's freshly initialized one; both rows land, only the fused one is ranked."""
    pretrained, tuned_from = [], []
    real_pretrain, real_finetune = fewlabel.pretrain, fewlabel.finetune

    def state(encoder) -> dict:
        return {k: v.detach().clone() for k, v in encoder.state_dict().items()}

    def spy_pretrain(*args, **kwargs):
        result = real_pretrain(*args, **kwargs)
        pretrained.append(state(result.encoder))
        return result

    def spy_finetune(cfg, split, encoder, **kwargs):
        tuned_from.append(state(encoder))
        return real_finetune(cfg, split, encoder, **kwargs)

    monkeypatch.setattr(fewlabel, "pretrain", spy_pretrain)
    monkeypatch.setattr(fewlabel, "finetune", spy_finetune)
    out = tmp_path / "fewlabel.json"
    args = ["--tasks", "sim", "--seeds", "1", "--no-baselines", "--out", str(out)]
    assert fewlabel.main([*args, *(f"--set={s}" for s in TINY_RUN)]) == 0

    (before,), (from_pretrained, from_fresh) = pretrained, tuned_from
    cfg = fewlabel.task_config(load_config(None, TINY_RUN), "sim-reference", 4, seed=0)
    fresh = state(initial_encoder(cfg))
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(from_pretrained, before) and same(from_fresh, fresh)
    assert not same(from_fresh, before)
    result = json.loads(out.read_text())
    (kept,) = result["pretrain_epoch_kept"].values()  # the monitor's score after every epoch
    assert len(kept["scores"]) == kept["trained"] == 1 and kept["epoch"] == 1
    (rows,) = result["summary"].values()
    assert rows[fewlabel.UNPRETRAINED]["rank"] is not None
    assert rows[fewlabel.UNPRETRAINED_ALONE]["rank"] is None
    assert 0 <= rows[fewlabel.UNPRETRAINED]["macro_f1_mean"] <= 1
    (gain,) = result["pretraining_gain"].values()
    recipe = rows[fewlabel.RECIPE]["macro_f1_mean"] - rows[fewlabel.UNPRETRAINED]["macro_f1_mean"]
    assert gain["the recipe"]["mean"] == pytest.approx(recipe)
    assert sum(gain["the model alone"][k] for k in ("gained", "tied", "lost")) == 1


def test_no_ablation_skips_the_never_pretrained_rows(tmp_path):
    out = tmp_path / "fewlabel.json"
    args = ["--tasks", "sim", "--seeds", "1", "--no-baselines", "--no-ablation", "--out", str(out)]
    assert fewlabel.main([*args, *(f"--set={s}" for s in TINY_RUN)]) == 0
    (rows,) = json.loads(out.read_text())["summary"].values()
    assert fewlabel.RECIPE in rows and fewlabel.UNPRETRAINED not in rows
    assert json.loads(out.read_text())["pretraining_gain"] == {}
