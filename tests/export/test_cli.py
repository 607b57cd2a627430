from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from export.cli import app

runner = CliRunner()


def test_help_lists_the_options_and_formats():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--checkpoint", "--formats", "--calibration-method", "--min-agreement"):
        assert option in result.output
    assert "tflite-int8" in result.output


def test_happy_path_prints_formats_parity_and_how_to_run_it(exported):
    output = exported["output"]
    for line in ("onnx: ok in", "onnx-int8: ok in", "tflite-int8: ok in", "encoder.int8.tflite ("):
        assert line in output
    assert "Parity with torch fp32" in output
    archive = exported["folder"].with_name("fixture-1.tar.gz")
    assert f"deploy/install-agent.sh firmware_configs/raspberry-pi-5.toml {archive}" in output


def test_the_printed_next_step_runs_as_printed(exported, tmp_path):
    """`try it here: <command>` is copied into a shell from the repository root, unchanged."""
    import shlex
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    (line,) = [x for x in exported["output"].splitlines() if x.startswith("try it here:")]
    command = shlex.split(line.removeprefix("try it here:"))
    assert command[:3] == ["faultwatch", "agent", "run"]
    exe = shutil.which("faultwatch") or str(Path(sys.executable).with_name("faultwatch"))
    state = root / "runs" / "agent-state"  # the dev config's state_dir: a developer's own
    kept = tmp_path / "kept-agent-state"  # is put back afterwards
    if state.exists():
        shutil.move(state, kept)
    try:
        done = subprocess.run(
            [exe, *command[1:]], cwd=root, capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
        if kept.exists():
            shutil.move(kept, state)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "agent: stopped after" in done.stdout
    assert " 0 windows" not in done.stdout


def test_typo_in_formats_exits_1_with_did_you_mean(run_dir, tmp_path):
    result = runner.invoke(app, ["--checkpoint", str(run_dir), "--formats", "onnx,tflite8"])
    assert result.exit_code == 1
    assert "unknown format 'tflite8'; did you mean 'tflite-int8'?" in result.output


def test_option_the_formats_do_not_take_exits_1(run_dir):
    args = ["--checkpoint", str(run_dir), "--formats", "onnx", "--calibration-method", "entropy"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "--calibration-method applies to onnx-int8" in result.output


def test_missing_checkpoint_is_one_line_and_exit_1(tmp_path):
    result = runner.invoke(app, ["--checkpoint", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"export: {tmp_path / 'nope.pt'} does not exist; pass a fine-tuned .pt file or the "
        "run folder holding it"
    ]


def test_broken_calibration_fails_the_gate_unless_thresholds_allow_it(
    trained, make_run, tmp_path: Path
):
    """Calibration windows left in g (x 1e-3) instead of z-scores: the gate must stop it."""
    bad_run = make_run(tmp_path / "run", trained, calibration=trained["calibration"] * 1e-3)
    args = ["--checkpoint", str(bad_run), "--out", str(tmp_path / "b"), "--formats", "onnx-int8"]
    result = runner.invoke(app, [*args, "--version", "1"])
    assert result.exit_code == 1
    assert "parity gate failed, no bundle written" in result.output
    assert "onnx-int8: agreement with fp32" in result.output
    assert "(--min-agreement)" in result.output
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())

    loose = ["--min-agreement", "0", "--max-accuracy-drop", "100", "--version", "2"]
    result = runner.invoke(app, [*args, *loose])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "faultwatch-cnn-2" / "encoder.int8.onnx").is_file()
    assert not (tmp_path / "b" / "faultwatch-cnn-2" / "encoder.fp32.onnx").exists()
    assert np.isfinite(np.load(bad_run / "calibration.npz")["x"]).all()
