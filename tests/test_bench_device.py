"""`python -m bench device`: quick pieces on the tiny test bundle measure every row for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import device
from tests.edge_agent.bundle_fixture import agent_bundle_folder


@pytest.fixture(scope="session")
def agent_bundle(request, tmp_path_factory):
    return agent_bundle_folder(request, tmp_path_factory)


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "device.json"
    assert device.main([*args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_pieces_on_the_tiny_bundle_measure_every_row(tmp_path, agent_bundle):
    only = "calibration,zero_label,run_to_failure,borderline,cost"
    result = run_bench(
        tmp_path, "--quick", "--bundle", str(agent_bundle), "--record-s", "8", "--only", only
    )
    rows = result["rows"]
    expected = {key for name in only.split(",") for key in device.SECTIONS[name]}
    assert set(rows) == expected
    for key in expected:
        r = rows[key]
        assert {"measure", "value", "measured", "target", "met", "detail"} <= set(r), key
    fractions = [f"calibration_{k}" for k in device.K_LABELS] + [
        "calibration_vs_factory",
        "zero_label_sim_inner_race",
        "zero_label_sim_outer_race",
    ]
    for key in fractions:
        assert 0.0 <= rows[key]["value"] <= 1.0, (key, rows[key]["measured"])
        assert isinstance(rows[key]["met"], bool), key
    # the bundle has no ball class and is no 4-class CWRU model: said, not guessed
    for key in ("zero_label_sim_ball", "zero_label_cwru_inner_race"):
        assert rows[key]["value"] is None and rows[key]["measured"].startswith("not measured")
    # every calibration call went through the CLI; the first (one class) is refused by design
    run = rows["calibration_vs_factory"]["detail"]["runs"][0]
    for k in device.K_LABELS:
        calls = run["k"][str(k)]["calls"]
        assert [c["label"] for c in calls] != [] and calls[0]["exit_code"] == 1
        assert sorted(c["label"] for c in calls) == ["inner_race", "normal", "outer_race"]
    assert rows["borderline_hour"]["value"] >= 1  # unknown -> a state counts as a change
    life = rows["run_to_failure"]["detail"]["lives"][0]
    assert life["first_alarm"] is None or 0.0 < life["first_alarm"] <= 1.0
    cost = rows["cost_ratio"]["detail"]
    assert cost["encoder_ms"] > 0 and cost["indicators_ms"] > 0 and cost["evidence_ms_per_call"] > 0
    assert rows["cost_ratio"]["value"] > 0


def test_a_missing_bundle_is_a_reason_not_a_crash(tmp_path):
    rows = run_bench(tmp_path, "--quick", "--bundle", str(tmp_path / "nothing"), "--only", "cost")
    assert rows["rows"]["cost_ratio"]["value"] is None
    assert "not measured" in rows["rows"]["cost_ratio"]["measured"]
    assert "nothing" in rows["rows"]["cost_ratio"]["measured"]


def test_help_and_a_bad_section(capsys):
    with pytest.raises(SystemExit) as done:
        bench_main.main(["device", "--help"])
    assert done.value.code == 0 and "--seeds" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        device.main(["--only", "everything"])
    assert done.value.code == 2 and "valid: calibration" in capsys.readouterr().err


def test_cwru_record_names_give_class_size_and_load():
    assert device.cwru_record_class("IR007_1_106") == ("inner_race", "007", "1")
    assert device.cwru_record_class("OR021at6_3_237") == ("outer_race", "021", "3")
    assert device.cwru_record_class("B014_0_185") == ("ball", "014", "0")
    assert device.cwru_record_class("Normal_0_97") == ("normal", "", "0")


def test_cwru_calibration_scores_the_device_template_beside_the_head(tmp_path, agent_bundle):
    if not device.cwru_folder().is_dir():
        pytest.skip(f"no CWRU records under {device.cwru_folder()} (see ../shared/datasets)")
    rows = run_bench(tmp_path, "--quick", "--bundle", str(agent_bundle), "--only",
                     "cwru_calibration")["rows"]  # fmt: skip
    assert set(rows) == set(device.SECTIONS["cwru_calibration"])
    for k in device.K_LABELS:
        runs = rows[f"cwru_calibration_{k}"]["detail"]["runs"]
        # the tiny bundle knows normal, inner and outer race: 3 records label each set
        assert len(runs) == 3 and all(r["labels"] == 3 * k for r in runs)
        for r in runs:
            for key in ("same_device", "same_head", "rig_device", "rig_head", "rig_evidence"):
                assert 0.0 <= r[key] <= 1.0
        assert isinstance(rows[f"cwru_calibration_{k}"]["met"], bool)
        assert rows[f"cwru_calibration_rig_{k}"]["met"] is None  # reported, no target
    # a few labels of the device's own records: the template carries them (README figures)
    five = rows["cwru_calibration_5"]["detail"]["runs"]
    assert min(r["same_device"] for r in five) > 0.9


def test_clear_lines_follow_the_score_windows_as_the_agent_feeds_the_stream():
    from types import SimpleNamespace

    from edge_agent.contract.preprocess import frame
    from edge_agent.physics.bearing_sim import BearingSimulator, Conditions

    rate, spec = 12_000, SimpleNamespace(window=2048, hop=512)
    sim = BearingSimulator(Conditions(fault="outer_race", severity=1.0), rate, seed=1)
    x = sim.read(9 * rate)
    start = 5 * rate + 100  # off the hop grid, once the stream has its band and 3 readings
    clear = device.clear_lines(x, start, spec, rate, 1797.0)
    assert len(clear) == len(frame(x[start:], spec.window, spec.hop))
    assert clear[-1] == "outer_race" and clear.count("outer_race") > 0.9 * len(clear)
    healthy = BearingSimulator(Conditions(fault="normal", severity=1.0), rate, seed=1)
    assert set(device.clear_lines(healthy.read(6 * rate), rate, spec, rate, 1797.0)) == {None}


def test_the_device_decision_follows_a_clear_line_only_beyond_the_labels_reach():
    from dataclasses import replace

    import numpy as np

    from edge_agent.calibration.reach import LabelReach
    from edge_agent.pipeline.head import Head

    names = ["normal", "inner_race", "outer_race"]
    w1, b1, w2 = np.eye(2, dtype=np.float32), np.zeros(2, np.float32), np.zeros((2, 3), np.float32)
    says_normal = Head(w1, b1, w2, np.array([9.0, 0.0, 0.0], np.float32))
    emb, views = np.zeros((4, 2), np.float32), np.zeros((4, 8), np.float32)
    y = np.array([0, 0, 2, 2])
    clear = [None, None, "outer_race", "outer_race"]
    far = replace(says_normal, reach=LabelReach(np.ones((1, 8)), 0.5))
    near = replace(says_normal, reach=LabelReach(np.zeros((1, 8)), 0.5))
    assert device.macro_f1(far, emb, views, y, names, clear) == 1.0  # the line decides
    assert device.macro_f1(near, emb, views, y, names, clear) < 0.5  # the labels vouch
    assert device.macro_f1(says_normal, emb, views, y, names, clear) < 0.5  # no reach: vouch
    assert device.macro_f1(far, emb, views, y, names) < 0.5  # no evidence given


def test_the_real_agent_replays_a_cwru_record_in_a_loop_on_a_stored_head(tmp_path, agent_bundle):
    """1c's measure on the tiny bundle: its factory head, stored as a device would hold it,
    calls an outer-race record inner race; the record's clear BPFO line decides, unless the
    config says never."""
    if not device.cwru_folder().is_dir():
        pytest.skip(f"no CWRU records under {device.cwru_folder()} (see ../shared/datasets)")
    from edge_agent.calibration.headstore import HeadStore
    from edge_agent.contract.bundle import check_bundle

    manifest, factory = check_bundle(agent_bundle)
    heads = tmp_path / "heads"
    HeadStore(heads).init_from_factory(factory, manifest.model_version)
    record = device.cwru_records()["OR007at6_1_131"]
    share = device.agent_share(agent_bundle, heads, record, "unlabeled", tmp_path, 30.0)
    never = device.agent_share(agent_bundle, heads, record, "never", tmp_path, 30.0)
    assert share > 0.95 and never < 0.05
