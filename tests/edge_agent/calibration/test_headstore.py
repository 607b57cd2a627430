"""HeadStore: versions, rollback, and survival of power cuts (kill -9, truncated files)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.calibration.headstore import CommitMeta, HeadStore
from edge_agent.pipeline.head import Head

REPO = Path(__file__).resolve().parents[3]


def tagged_head(tag: float, d: int = 4, h: int = 3, c: int = 2) -> Head:
    """A small head whose weights all equal `tag`, so its identity survives a round trip."""
    f = np.float32(tag)
    return Head(
        np.full((d, h), f), np.full(h, f), np.full((h, c), f), np.full(c, f), temperature=1.5
    )


def tag_of(head: Head) -> float:
    return float(head.w1[0, 0])


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_commit_and_reopen(tmp_path: Path) -> None:
    store = HeadStore(tmp_path)
    with pytest.raises(LookupError, match="init_from_factory"):
        store.current()
    assert store.init_from_factory(tagged_head(0), "1.0") == 1
    assert store.init_from_factory(tagged_head(0), "1.0") == 1  # same bundle: nothing new
    meta = CommitMeta(accuracy_before=0.6, accuracy_after=0.9, n_samples=24, note="site A")
    assert store.commit(tagged_head(1), meta) == 2

    reopened = HeadStore(tmp_path)
    version, head = reopened.current()
    assert (version, tag_of(head), head.temperature) == (2, 1.0, 1.5)
    last = reopened.history()[-1]
    assert (last.source, last.accuracy_after, last.n_samples, last.parent) == (
        "calibration",
        0.9,
        24,
        1,
    )
    assert last.sha256 == file_sha(tmp_path / "heads" / "v0002.npz")
    assert json.loads((tmp_path / "current").read_text())["version"] == 2


def test_new_bundle_version_resets_to_factory_and_blocks_rollback_across(tmp_path: Path) -> None:
    store = HeadStore(tmp_path)
    store.init_from_factory(tagged_head(0), "1.0")
    store.commit(tagged_head(1), CommitMeta())
    assert store.init_from_factory(tagged_head(10), "2.0") == 3
    assert tag_of(store.current()[1]) == 10
    with pytest.raises(ValueError, match="no earlier head"):
        store.rollback()
    with pytest.raises(ValueError, match=r"bundle 1\.0.*bundle 2\.0 is installed"):
        store.rollback(2)


def test_rollback_twice_walks_back_the_lineage(tmp_path: Path) -> None:
    store = HeadStore(tmp_path)
    store.init_from_factory(tagged_head(0), "1.0")
    store.commit(tagged_head(1), CommitMeta())
    store.commit(tagged_head(2), CommitMeta())
    assert store.rollback() == 4
    assert tag_of(store.current()[1]) == 1
    assert store.rollback() == 5
    assert tag_of(store.current()[1]) == 0
    with pytest.raises(ValueError, match="factory head"):
        store.rollback()
    assert store.rollback(3) == 6  # forward again to a named version
    assert tag_of(store.current()[1]) == 2
    assert [e.source for e in store.history()][-3:] == ["rollback"] * 3
    with pytest.raises(ValueError, match=r"no head version 42.*known versions: \[1, 2"):
        store.rollback(42)


def test_commit_refuses_a_head_of_another_shape(tmp_path: Path) -> None:
    store = HeadStore(tmp_path)
    store.init_from_factory(tagged_head(0), "1.0")
    with pytest.raises(ValueError, match=r"w1 \(5, 3\).*current head's w1 \(4, 3\)"):
        store.commit(tagged_head(1, d=5), CommitMeta())


def make_store_with_three_versions(folder: Path) -> None:
    store = HeadStore(folder)
    store.init_from_factory(tagged_head(0), "1.0")
    store.commit(tagged_head(1), CommitMeta())
    store.commit(tagged_head(2), CommitMeta())


def test_truncated_temp_file_is_ignored_and_removed(tmp_path: Path) -> None:
    make_store_with_three_versions(tmp_path)
    leftover = tmp_path / "heads" / ".tmp-abc123"
    leftover.write_bytes((tmp_path / "heads" / "v0003.npz").read_bytes()[:50])
    (tmp_path / ".tmp-history").write_text("[{")
    version, head = HeadStore(tmp_path).current()
    assert (version, tag_of(head)) == (3, 2.0)
    assert not leftover.exists() and not (tmp_path / ".tmp-history").exists()


def test_truncated_head_file_falls_back_to_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_store_with_three_versions(tmp_path)
    path = tmp_path / "heads" / "v0003.npz"
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="edge_agent.calibration.headstore"):
        store = HeadStore(tmp_path)
    assert store.current()[0] == 2
    assert "v3" in caplog.text and "checksum mismatch" in caplog.text
    assert json.loads((tmp_path / "current").read_text())["version"] == 2
    with pytest.raises(ValueError, match="damaged"):
        store.rollback(3)
    assert store.commit(tagged_head(7), CommitMeta()) == 4  # never reuses a damaged number
    assert store.history()[-1].parent == 2


def test_garbage_current_pointer_is_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_store_with_three_versions(tmp_path)
    (tmp_path / "current").write_bytes(b"\x00\xffnot json")
    with caplog.at_level(logging.WARNING, logger="edge_agent.calibration.headstore"):
        assert HeadStore(tmp_path).current()[0] == 3
    assert "unreadable" in caplog.text
    assert json.loads((tmp_path / "current").read_text())["version"] == 3


def test_garbage_history_acts_empty_and_keeps_numbers_unique(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_store_with_three_versions(tmp_path)
    (tmp_path / "history.json").write_text('[{"version": 1, "cre')
    with caplog.at_level(logging.WARNING, logger="edge_agent.calibration.headstore"):
        store = HeadStore(tmp_path)
    assert "history.json is unreadable" in caplog.text
    assert list(tmp_path.glob("history.json.corrupt-*"))
    assert store.init_from_factory(tagged_head(0), "1.0") == 4
    assert HeadStore(tmp_path).current()[0] == 4


def test_missing_head_file_of_every_version_acts_empty(tmp_path: Path) -> None:
    make_store_with_three_versions(tmp_path)
    for path in (tmp_path / "heads").iterdir():
        path.unlink()
    store = HeadStore(tmp_path)
    with pytest.raises(LookupError):
        store.current()
    assert store.init_from_factory(tagged_head(0), "1.0") == 4


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from edge_agent.pipeline.head import Head
    from edge_agent.calibration.headstore import CommitMeta, HeadStore

    def head(tag):
        f = np.float32(tag)
        return Head(np.full((4, 3), f), np.full(3, f), np.full((3, 2), f), np.full(2, f))

    store = HeadStore(Path(sys.argv[1]))
    store.init_from_factory(head(0), "1.0")
    tag = len(store.history())
    while True:
        tag += 1
        store.commit(head(tag), CommitMeta(note=str(tag)))
        print(tag, flush=True)
    """
)


def test_kill_9_during_commits_leaves_a_valid_current_head(tmp_path: Path) -> None:
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        assert proc.stdout is not None
        for _ in range(rng.randint(2, 8)):
            assert proc.stdout.readline(), "writer died early"
        time.sleep(rng.uniform(0.0, 0.03))  # a commit takes a few ms: land anywhere in one
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()

        store = HeadStore(tmp_path)
        version, head = store.current()
        entry = next(e for e in store.history() if e.version == version)
        assert file_sha(tmp_path / "heads" / f"v{version:04d}.npz") == entry.sha256
        expected_tag = 0.0 if entry.source == "factory" else float(entry.note)
        assert tag_of(head) == expected_tag
        assert not list(tmp_path.rglob(".tmp-*"))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(1, 1000)),
        st.tuples(st.just("rollback"), st.none()),
        st.tuples(st.just("rollback_to"), st.integers(1, 12)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=10,
)


@settings(max_examples=20, deadline=None)
@given(ops)
def test_operations_match_a_simple_model(operations: list[tuple[str, int | None]]) -> None:
    """Model: version -> (tag, parent); a rollback copies the target's tag and parent."""
    with tempfile.TemporaryDirectory() as folder:
        store = HeadStore(Path(folder))
        store.init_from_factory(tagged_head(0), "1.0")
        model: dict[int, tuple[int, int | None]] = {1: (0, None)}
        current = 1
        for op, arg in operations:
            if op == "commit":
                assert arg is not None
                model[len(model) + 1] = (arg, current)
                current = store.commit(tagged_head(arg), CommitMeta())
            elif op == "reopen":
                store = HeadStore(Path(folder))
            else:
                target = model[current][1] if op == "rollback" else arg
                if target is None or target not in model:
                    with pytest.raises(ValueError):
                        store.rollback(arg)
                    continue
                if target != current:
                    model[len(model) + 1] = model[target]
                    current = len(model)
                assert store.rollback(arg) == current
            version, head = store.current()
            assert version == current
            assert tag_of(head) == model[current][0]
            assert len(store.history()) == len(model)
        assert HeadStore(Path(folder)).current()[0] == current
