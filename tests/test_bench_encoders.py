"""`python -m bench encoders`: which encoder a device's few labels can use on an unseen rig."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import __main__ as bench_main
from bench import encoders
from train.cwru import default_data_root

SIZES, LOADS = (0.007, 0.021), (0, 3)


def toy_rig() -> dict[str, encoders.Halves]:
    """A normal record and one record per fault class, size and load (no windows needed)."""
    records = {"normal": encoders.Halves(0, (0.0, 0), np.zeros(0), np.zeros(0))}
    for label in (1, 2, 3):
        for size in SIZES:
            for load in LOADS:
                key = (size, load)
                records[f"{label}-{size}-{load}"] = encoders.Halves(
                    label, key, np.zeros(0), np.zeros(0)
                )
    return records


def embedded_by(records, point, per_record: int = 12, seed: int = 0):
    """Embeddings around point(record id, halves) with a little noise, first and last half."""
    rng = np.random.default_rng(seed)
    return {
        r: tuple(point(r, h) + 0.05 * rng.normal(size=(per_record, len(point(r, h)))) for _ in "ab")
        for r, h in records.items()
    }


def test_an_embedding_of_the_fault_scores_on_the_whole_rig() -> None:
    records = toy_rig()
    centres = np.eye(4) * 3  # one dimension per class
    scores = encoders.probe(embedded_by(records, lambda r, h: centres[h.label]), records, 3, 0)
    assert scores["same"] == scores["rig"] == scores["rig_worst"] == 1.0


def test_an_embedding_of_the_recording_scores_only_on_the_labeled_records() -> None:
    records = toy_rig()
    rng = np.random.default_rng(1)
    places = {r: 3 * rng.normal(size=8) for r in records}  # where a record lies says nothing
    scores = encoders.probe(embedded_by(records, lambda r, h: places[r]), records, 3, 0)
    assert scores["same"] == 1.0 and scores["rig"] < 0.6


def test_without_cwru_it_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FAULTWATCH_DATA", str(tmp_path))
    out = tmp_path / "encoders.json"
    assert encoders.main(["--seeds", "1", "--out", str(out)]) == 0
    assert "not measured: no CWRU records" in capsys.readouterr().out and not out.exists()


def test_help_names_the_encoders(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        bench_main.main(["encoders", "--help"])
    assert done.value.code == 0 and "never trained" in capsys.readouterr().out


@pytest.mark.realdata
def test_every_encoder_is_scored_on_the_real_rig(tmp_path) -> None:
    if not (default_data_root() / "cwru").is_dir():
        pytest.skip(f"no CWRU records under {default_data_root()} (see ../shared/datasets)")
    out = tmp_path / "encoders.json"
    tiny = ["epochs=1", "labels_per_class=4", "unlabeled_windows=60", "window=512", "hop=256",
            "sim_seconds_per_record=1.0", "supervised_epochs=2", "probe_epochs=2",
            "finetune_epochs=1"]  # fmt: skip
    assert encoders.main(["--seeds", "1", "--out", str(out), *[f"--set={s}" for s in tiny]]) == 0
    result = json.loads(out.read_text())
    assert result["overrides"] == tiny and set(result["runs"]) == set(encoders.ENCODERS)
    for name in encoders.ENCODERS:
        (run,) = result["runs"][name]
        assert set(run) == {f"k{k}" for k in encoders.K_LABELS}
        for scores in run.values():
            assert 0.0 <= scores["same_worst"] <= scores["same"] <= 1.0
            assert 0.0 <= scores["rig_worst"] <= scores["rig"] <= 1.0
