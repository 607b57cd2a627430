"""The benches that train share `--config` / `--set`: a bad file or field is a clean error."""

from __future__ import annotations

import pytest

from bench import fewlabel, labels, openset


@pytest.mark.parametrize("bench", [fewlabel, openset, labels])
def test_a_bad_override_exits_2_naming_the_field(bench, capsys):
    with pytest.raises(SystemExit) as done:
        bench.main(["--set", "cwru_channel=XX"])
    assert done.value.code == 2 and "cwru_channel" in capsys.readouterr().err


@pytest.mark.parametrize("bench", [fewlabel, openset, labels])
def test_a_missing_config_file_exits_2_naming_it(bench, tmp_path, capsys):
    missing = tmp_path / "absent.toml"
    with pytest.raises(SystemExit) as done:
        bench.main(["--config", str(missing)])
    assert done.value.code == 2 and "absent.toml" in capsys.readouterr().err
