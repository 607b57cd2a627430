"""The demo's agent config stays valid as the config schema grows (the demo is the first thing a
newcomer runs; it must not fail at step 5 after minutes of training)."""

from __future__ import annotations

from edge_agent.config import load_config
from faultwatch.demo import AGENT_CONFIG


def test_the_demo_agent_config_validates(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_CONFIG.format(bundle=tmp_path / "bundle", port=1883, protocol="5"))
    cfg = load_config(path)
    assert cfg.bearing is not None and cfg.bearing.geometry().n_balls == 9
    assert cfg.commissioning.period_s < 30  # learned inside the replay's healthy first phase
    assert cfg.decisions.min_dwell_s <= 10  # the replay's phases last 30 s
