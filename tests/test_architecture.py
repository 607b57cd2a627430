"""Architecture rules that a refactor could silently break."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'train', 'export', 'faultwatch'}:
            raise ImportError(f'edge code imported {name}')
sys.meta_path.insert(0, Block())
import edge_agent
for mod in pkgutil.walk_packages(edge_agent.__path__, 'edge_agent.'):
    importlib.import_module(mod.name)
print('ok', len(list(pkgutil.walk_packages(edge_agent.__path__))))
"""


def test_edge_agent_imports_without_torch_train_export_or_plant_tools():
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_launcher_lists_commands_and_rejects_unknown(capsys):
    from faultwatch.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "export", "agent", "scada"):
        assert name in out
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_subcommand_has_help():
    for name in ("train", "export", "agent", "scada"):
        result = subprocess.run(
            [sys.executable, "-m", "faultwatch", name, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-1500:]}"
        assert "Usage" in result.stdout


LOWER_LAYERS = ("contract", "pipeline", "physics", "calibration", "sources", "backends", "mqtt")
RUN_LAYER = ("edge_agent.agent", "edge_agent.cli")


def _edge_imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("edge_agent")}


def test_sub_packages_below_the_agent_never_import_it():
    """The window path, the contract, the stores and the transport are usable (and testable)
    without the running agent; the MQTT package knows nothing of windows or heads."""
    wrong = []
    for layer in LOWER_LAYERS:
        for path in (ROOT / "edge_agent" / layer).rglob("*.py"):
            for name in _edge_imports(path):
                if name.startswith(RUN_LAYER):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
                if layer == "mqtt" and name.startswith(
                    ("edge_agent.pipeline", "edge_agent.calibration", "edge_agent.physics")
                ):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []
