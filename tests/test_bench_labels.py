"""`python -m bench labels`: random vs suggested labels through the recipe's template path."""

from __future__ import annotations

import json

import pytest

from bench import __main__ as bench_main
from bench import labels
from train.cwru import default_data_root


def test_without_cwru_it_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAULTWATCH_DATA", str(tmp_path))
    out = tmp_path / "labels.json"
    assert labels.main(["--seeds", "1", "--out", str(out)]) == 0
    assert "not measured: no CWRU records" in capsys.readouterr().out and not out.exists()


def test_help_names_the_budget(capsys):
    with pytest.raises(SystemExit) as done:
        bench_main.main(["labels", "--help"])
    assert done.value.code == 0 and "same budget" in capsys.readouterr().out


@pytest.mark.realdata
def test_suggested_labels_spend_the_same_budget_on_the_real_rig(tmp_path):
    if not (default_data_root() / "cwru").is_dir():
        pytest.skip(f"no CWRU records under {default_data_root()} (see ../shared/datasets)")
    out = tmp_path / "labels.json"
    assert labels.main(["--seeds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["overrides"] == []
    for task, classes in (("cwru 4 classes, 20 labels", 4), ("cwru 10 classes, 50 labels", 10)):
        run = result["runs"][task][0]
        spent = {k: sum(run[k]["labels_per_class"]) for k in ("random", "suggested")}
        assert spent == {"random": 5 * classes, "suggested": 5 * classes}
        assert run["random"]["labels_per_class"] == [5] * classes
        for k in ("random", "suggested"):
            assert 0.0 <= run[k]["macro_f1"] <= 1.0 and 0.0 <= run[k]["ece"] <= 1.0
    # seed 0 of 4 classes: the suggestions cover every bearing and the template diagnoses them
    assert result["runs"]["cwru 4 classes, 20 labels"][0]["suggested"]["macro_f1"] > 0.97
