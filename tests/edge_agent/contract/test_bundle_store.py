"""BundleStore: verified installs, an atomic active pointer, rollback, pruning, crash leftovers."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract import bundle_store as store_module
from edge_agent.contract.bundle import BundleError, pack, verify, write_manifest
from edge_agent.contract.bundle_store import ACTIVE, BundleStore, load_bundle
from edge_agent.pipeline.head import Head

D, C = 8, 2


def make_bundle(dest: Path, version: str = "1") -> Path:
    """A small valid bundle folder `dest/model-<version>` (encoder bytes differ per version)."""
    folder = dest / f"model-{version}"
    folder.mkdir(parents=True)
    (folder / "encoder.fp32.onnx").write_bytes(f"encoder {version}".encode() * 50)
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(D, 4)), rng.normal(size=(4, C))
    head = Head(w1.astype(np.float32), np.zeros(4, np.float32), w2.astype(np.float32),
                np.zeros(C, np.float32))  # fmt: skip
    head.save(folder / "head.npz")
    write_manifest(
        folder,
        {
            "model_name": "model",
            "model_version": version,
            "class_names": ["normal", "ball"],
            "preprocessing": {
                "sample_rate_hz": 12000,
                "window": 256,
                "hop": 128,
                "normalization": "zscore",
            },
            "embedding_dim": D,
            "encoders": [{"format": "fp32.onnx", "file": "encoder.fp32.onnx", "batch": "dynamic"}],
        },
    )
    return folder


def on_disk(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture
def store(tmp_path) -> BundleStore:
    return BundleStore(tmp_path / "state" / "bundles")


def test_install_makes_a_verified_copy_named_after_the_model(store, tmp_path):
    source = make_bundle(tmp_path / "src")
    (source / "notes.txt").write_text("not listed in the manifest")
    folder = store.install(source)
    assert folder.parent == store.root
    assert folder.name.startswith("model-1-") and len(folder.name) == len("model-1-") + 12
    assert verify(folder) == verify(source)
    assert sorted(p.name for p in folder.iterdir()) == [
        "encoder.fp32.onnx",
        "head.npz",
        "manifest.json",
    ]
    assert store.installed() == [folder] and store.current() is None


def test_same_content_installs_once_from_a_folder_or_an_archive(store, tmp_path):
    source = make_bundle(tmp_path / "src")
    archive = pack(source, tmp_path / "model-1.tar.gz")
    first = store.install(source)
    (first / "marker").write_text("same folder, not a new copy")
    assert {store.install(source), store.install(archive), store.install(first)} == {first}
    assert (first / "marker").exists()
    assert on_disk(store.root) == [first.name]


def test_activate_and_rollback_move_the_pointer(store, tmp_path):
    one = store.install(make_bundle(tmp_path / "src", "1"))
    two = store.install(make_bundle(tmp_path / "src", "2"))
    with pytest.raises(BundleError, match="no previous bundle to roll back to"):
        store.rollback()
    store.activate(one)
    assert (store.current(), store.previous()) == (one, None)
    store.activate(two)
    assert (store.current(), store.previous()) == (two, one)
    store.activate(two)  # already current: the previous one stays
    assert store.previous() == one
    assert store.rollback() == one
    assert (store.current(), store.previous()) == (one, two)
    reopened = BundleStore(store.root)  # the pointer is on disk
    assert (reopened.current(), reopened.previous()) == (one, two)
    assert json.loads((store.root / ACTIVE).read_text()) == {
        "current": one.name,
        "previous": two.name,
        "origin": "rollback",
        "configured": two.name,  # the config named `two` when it was activated
    }


def test_start_up_prefers_an_update_while_the_config_is_unchanged(store, tmp_path):
    configured = store.install(make_bundle(tmp_path / "src", "1"))
    updated = store.install(make_bundle(tmp_path / "src", "2"))
    store.activate(configured)
    assert store.start_bundle(configured) == configured
    store.activate(updated, origin="reload")  # an operator's reload lasts until the restart
    assert store.start_bundle(configured) == configured
    store.activate(updated, origin="update")  # over the air: kept across restarts
    assert store.start_bundle(configured) == updated
    other = store.install(make_bundle(tmp_path / "src", "3"))
    assert store.start_bundle(other) == other  # a newly configured bundle wins


def test_failing_self_test_leaves_current_unchanged(store, tmp_path):
    one = store.install(make_bundle(tmp_path / "src", "1"))
    two = store.install(make_bundle(tmp_path / "src", "2"))
    store.activate(one, self_test=lambda folder: None)
    tested = []

    def nan_embeddings(folder: Path) -> None:
        tested.append(folder)
        raise RuntimeError("4 of 4 test windows give NaN embeddings")

    with pytest.raises(BundleError) as err:
        store.activate(two, self_test=nan_embeddings)
    assert tested == [two]
    assert str(err.value) == (
        f"bundle {two.name} failed its self-test (4 of 4 test windows give NaN embeddings); "
        f"the active bundle is still {one.name}"
    )
    assert (store.current(), store.previous()) == (one, None)


def test_activate_refuses_a_foreign_or_altered_folder(store, tmp_path):
    one = store.install(make_bundle(tmp_path / "src", "1"))
    store.activate(one)
    with pytest.raises(BundleError, match="not a bundle installed in"):
        store.activate(make_bundle(tmp_path / "elsewhere", "2"))
    two = store.install(make_bundle(tmp_path / "src", "2"))
    (two / "encoder.fp32.onnx").write_bytes(b"altered")
    with pytest.raises(BundleError, match=r"checksum mismatch for encoder\.fp32\.onnx"):
        store.activate(two)
    assert store.current() == one


def test_rollback_refuses_a_previous_bundle_that_no_longer_verifies(store, tmp_path):
    one = store.install(make_bundle(tmp_path / "src", "1"))
    two = store.install(make_bundle(tmp_path / "src", "2"))
    store.activate(one)
    store.activate(two)
    (one / "head.npz").unlink()
    with pytest.raises(BundleError, match=r"head\.npz is listed in the manifest but missing"):
        store.rollback()
    assert store.current() == two


def test_refused_bundles_leave_nothing_behind(store, tmp_path):
    source = make_bundle(tmp_path / "src")
    (source / "head.npz").write_bytes(b"truncated")
    with pytest.raises(BundleError, match=rf"{source}: checksum mismatch for head\.npz"):
        store.install(source)
    with pytest.raises(BundleError, match="no such bundle"):
        store.install(tmp_path / "nowhere")
    assert on_disk(store.root) == []


def test_a_disk_error_mid_install_is_a_bundle_error_leaving_nothing(store, tmp_path, monkeypatch):
    source = make_bundle(tmp_path / "src")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.shutil, "copyfile", disk_full)
    with pytest.raises(BundleError, match=r"could not install it into .*No space left"):
        store.install(source)
    assert on_disk(store.root) == []


def test_an_interrupted_install_is_cleaned_at_the_next_start(tmp_path):
    root = tmp_path / "bundles"
    store = BundleStore(root)
    one = store.install(make_bundle(tmp_path / "src", "1"))
    store.activate(one)
    half = root / ".tmp-k3j2h1"  # a crash halfway through copying
    shutil.copytree(one, half / "bundle")
    (half / "bundle" / "head.npz").unlink()
    (root / ".tmp-pointer").write_text('{"current": "mod')  # a crash while writing the pointer
    reopened = BundleStore(root)
    assert on_disk(root) == [ACTIVE, one.name]
    assert reopened.current() == one


def test_twenty_installs_and_activations_keep_at_most_keep_plus_two(tmp_path):
    store = BundleStore(tmp_path / "bundles", keep=3)
    active = []
    for version in range(20):
        folder = store.install(make_bundle(tmp_path / "src", str(version)))
        store.activate(folder)
        active.append(folder)
        assert len(folders(store.root)) <= store.keep + 2
        assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]
    assert (store.current(), store.previous()) == (active[-1], active[-2])
    assert store.installed() == active[-3:]
    assert store.rollback() == active[-2]


def test_pruning_keeps_current_and_previous_beyond_keep(tmp_path):
    store = BundleStore(tmp_path / "bundles", keep=1)
    one = store.install(make_bundle(tmp_path / "src", "1"))
    store.activate(one)
    two = store.install(make_bundle(tmp_path / "src", "2"))
    store.activate(two)
    three = store.install(make_bundle(tmp_path / "src", "3"))
    four = store.install(make_bundle(tmp_path / "src", "4"))
    assert folders(store.root) == sorted([one, two, four])
    assert not three.exists()


def test_garbage_pointer_means_no_active_bundle(store, tmp_path, caplog):
    one = store.install(make_bundle(tmp_path / "src", "1"))
    (store.root / ACTIVE).write_bytes(b"\x00garbage")
    assert store.current() is None and "unreadable" in caplog.text
    store.activate(one)
    assert store.current() == one


def test_load_bundle_with_a_state_folder_installs_through_the_store(tmp_path):
    source = make_bundle(tmp_path / "src")
    root = tmp_path / "state" / "bundles"
    folder, manifest, _ = load_bundle(source, root)
    assert folder == BundleStore(root).install(source) and folder.parent == root
    assert manifest.model_version == "1"
    assert load_bundle(source)[0] == source  # without a state folder: used where it is
