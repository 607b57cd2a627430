"""`update_bundle`: signed bundles over http, every refusal leaves the device as it was, and a
bundle that fails on probation is rolled back. The real agent runs offline (`handle`)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent.agent import Agent
from edge_agent.agent.commands import handle
from edge_agent.agent.ota import DOWNLOAD_PREFIX
from edge_agent.config import load_config
from edge_agent.contract.bundle import MANIFEST, pack, verify
from edge_agent.contract.bundle_store import ACTIVE, BundleStore
from edge_agent.contract.commands import parse_command
from edge_agent.contract.signing import signature_text
from edge_agent.mqtt.memory import MemoryLink
from tests.edge_agent.agent.test_agent import NO_DRIFT
from tests.edge_agent.bundle_fixture import SEVERITY, simulator_source, write_config

NORMAL = [{"at_s": 0.0, "fault": "normal", "severity": SEVERITY}]
MIB = 2**20


class Files:
    """An http server on 127.0.0.1 serving registered bodies, truncated or endless on request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, int | None, bool]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in routes:
                    self.send_error(404)
                    return
                body, declared, endless = routes[self.path]
                self.send_response(200)
                if not endless:
                    self.send_header("Content-Length", str(declared or len(body)))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(body)
                        if not endless:
                            return
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(
        self, name: str, body: bytes, declared: int | None = None, endless: bool = False
    ) -> str:
        self.routes[f"/{name}"] = (body, declared, endless)
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files() -> Iterator[Files]:
    server = Files()
    yield server
    server.close()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_public(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def make_agent(tmp_path: Path, bundle: Path, key: Ed25519PrivateKey | None, **updates) -> Agent:
    keys = [str(write_public(key, tmp_path / "fleet.pub.pem"))] if key else []
    path = write_config(
        tmp_path / "dev", bundle, 1, source=simulator_source(NORMAL), decisions=NO_DRIFT,
        updates={"public_keys": keys, **updates},
    )  # fmt: skip
    return Agent(load_config(path))


def bundle_archive(
    base: Path,
    agent_bundle: Path,
    version: str,
    key: Ed25519PrivateKey | None,
    tamper: bool = False,
    **manifest_changes,
) -> bytes:
    """The tiny bundle as version `version` (manifest fields changed), signed by `key`."""
    folder = base / f"tiny-{version}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(agent_bundle, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["model_version"] = version
    for field, value in manifest_changes.items():
        if field == "sample_rate_hz":
            manifest["preprocessing"]["sample_rate_hz"] = value
        else:
            manifest[field] = value
    (folder / MANIFEST).write_text(json.dumps(manifest))
    verify(folder)
    if key is not None:
        (folder / "manifest.sig").write_bytes(signature_text((folder / MANIFEST).read_bytes(), key))
    if tamper:  # a valid bundle, but not the manifest that was signed
        manifest["thresholds"]["uncertain_below"] = 0.01
        (folder / MANIFEST).write_text(json.dumps(manifest))
        verify(folder)
    return pack(folder, base / f"tiny-{version}.tar.gz").read_bytes()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def update(agent: Agent, source: str, digest: str, request_id: str = "u1", **fields):
    body = json.dumps({"id": request_id, "source": source, "sha256": digest, **fields})
    command = parse_command("update_bundle", body.encode(), 4096)
    assert not hasattr(command, "reason"), command
    return handle(agent, command)


def reload(agent: Agent, path: Path | str, request_id: str = "r1"):
    body = json.dumps({"id": request_id, "path": str(path)}).encode()
    return handle(agent, parse_command("reload_bundle", body, 4096))


def run_windows(agent: Agent, n: int) -> None:
    """Feed the agent's window path `n` more windows from its source (no broker)."""
    if agent.link is None:
        agent.link = MemoryLink()
        agent.source.start()
    target = agent.windows_total + n
    while agent.windows_total < target:
        agent.push(agent.source.read(1.0))
        agent._drain()


def assert_unchanged(agent: Agent, model, result, reason: str) -> None:
    assert not result.ok, result
    assert result.message.startswith("update_bundle: kept the running bundle: "), result.message
    assert reason in result.message, result.message
    assert agent.model is model and all(ch.model is model for ch in agent.channels)
    assert BundleStore(agent.cfg.state_dir / "bundles").current() == model.folder
    assert list(agent.cfg.state_dir.glob(f"{DOWNLOAD_PREFIX}*")) == []


def test_a_signed_bundle_over_http_is_installed_and_runs(tmp_path, agent_bundle, files, key):
    with make_agent(tmp_path, agent_bundle, key) as agent:
        before = agent.model.folder
        run_windows(agent, 5)
        body = bundle_archive(tmp_path, agent_bundle, "2", key)
        result = update(agent, files.serve("tiny-2.tar.gz", body), sha(body).upper())
        assert result.ok, result.message
        assert result.data["model_name"] == "tiny" and result.data["model_version"] == "2"
        assert result.data["previous"] == before.name
        assert result.message.startswith("running tiny 2 from tiny-2-")
        assert agent.model.manifest.model_version == "2"
        assert all(ch.model is agent.model for ch in agent.channels)
        assert agent.status_data()["model_version"] == "2"
        store = BundleStore(agent.cfg.state_dir / "bundles")
        assert store.current() == agent.model.folder and store.previous() == before
        assert (agent.model.folder / "manifest.sig").is_file()
        windows = agent.windows_total
        run_windows(agent, 5)  # the new bundle classifies windows
        assert agent.windows_total >= windows + 5
        assert agent.channels[0].decisions.state == "normal"


def test_a_local_archive_path_is_accepted_too(tmp_path, agent_bundle, key):
    with make_agent(tmp_path, agent_bundle, key) as agent:
        body = bundle_archive(tmp_path, agent_bundle, "2", key)
        result = update(agent, str(tmp_path / "tiny-2.tar.gz"), sha(body))
        assert result.ok and agent.model.manifest.model_version == "2", result.message


def refused_cases(base: Path, agent_bundle: Path, key: Ed25519PrivateKey, files: Files):
    """(name, source, sha256, what the refusal says) for each way an update must fail."""
    other = Ed25519PrivateKey.generate()
    cases = []
    for name, body, reason in [
        ("unsigned", bundle_archive(base, agent_bundle, "u", None), "not signed (no manifest.sig)"),
        ("wrong-key", bundle_archive(base, agent_bundle, "w", other), "signed with another key"),
        (
            "tampered",
            bundle_archive(base, agent_bundle, "t", key, tamper=True),
            "manifest changed after signing",
        ),
        (
            "rate",
            bundle_archive(base, agent_bundle, "r", key, sample_rate_hz=16_000),
            "the bundle needs 16000 Hz but the running source delivers 12000 Hz",
        ),
        (
            "classes",
            bundle_archive(base, agent_bundle, "c", key, class_names=["normal", "ball", "cage"]),
            "send allow_class_change=true if that is intended",
        ),
    ]:
        cases.append((name, files.serve(name, body), sha(body), reason))
    good = bundle_archive(base, agent_bundle, "g", key)
    cases += [
        (
            "truncated",
            files.serve("truncated", good, declared=len(good) + 500),
            sha(good),
            f"download truncated ({len(good):,} of {len(good) + 500:,} bytes)",
        ),
        ("wrong-sha", files.serve("good", good), sha(b"another"), "the command says"),
        (
            "announced-too-big",
            files.serve("announced", b"x" * 10, declared=2 * MIB),
            sha(b"x" * 10),
            "the server announces 2,097,152",
        ),
        (
            "endless",  # no Content-Length: refused as soon as more than max_bytes arrived
            files.serve("endless", b"\0" * 65536, endless=True),
            sha(b""),
            "larger than updates.max_bytes = 1,048,576 bytes (more arrived)",
        ),
        ("missing", files.serve("x", b"")[:-1] + "nope", sha(b""), "HTTP 404"),
    ]
    return cases


def test_bad_updates_are_refused_with_their_reason_and_change_nothing(
    tmp_path, agent_bundle, files, key
):
    with make_agent(tmp_path, agent_bundle, key, max_bytes=MIB) as agent:
        model = agent.model
        run_windows(agent, 3)
        for name, source, digest, reason in refused_cases(tmp_path, agent_bundle, key, files):
            result = update(agent, source, digest, request_id=name)
            assert_unchanged(agent, model, result, reason)
        windows = agent.windows_total
        run_windows(agent, 3)  # still running the bundle it had
        assert agent.windows_total > windows and agent.model is model
        installed = BundleStore(agent.cfg.state_dir / "bundles").installed()
        assert installed == [model.folder]  # nothing of a refused bundle landed in the store


def unsafe_archive(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo({"dotdot": "tiny-9/../../evil", "absolute": "/tmp/evil"}.get(
            kind, "tiny-9/manifest.json"))  # fmt: skip
        data = b"{}"
        if kind == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(member)
        else:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("dotdot", "unsafe member path 'tiny-9/../../evil'"),
        ("absolute", "unsafe member path '/tmp/evil'"),
        ("link", "is a link, not a regular file"),
    ],
)
def test_archives_with_unsafe_members_are_refused(tmp_path, agent_bundle, files, key, kind, reason):
    with make_agent(tmp_path, agent_bundle, key) as agent:
        body = unsafe_archive(kind)
        result = update(agent, files.serve(kind, body), sha(body))
        assert_unchanged(agent, agent.model, result, reason)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_a_class_change_goes_through_when_the_command_allows_it(tmp_path, agent_bundle, files, key):
    with make_agent(tmp_path, agent_bundle, key) as agent:
        classes = ["normal", "ball", "cage"]
        body = bundle_archive(tmp_path, agent_bundle, "c", key, class_names=classes)
        result = update(agent, files.serve("c", body), sha(body), allow_class_change=True)
        assert result.ok, result.message
        assert agent.channels[0].decisions.class_names == classes


def test_without_update_keys_nothing_is_installed_over_the_air(tmp_path, agent_bundle, files, key):
    with make_agent(tmp_path, agent_bundle, None) as agent:
        body = bundle_archive(tmp_path, agent_bundle, "2", key)
        result = update(agent, files.serve("b", body), sha(body))
        assert_unchanged(
            agent, agent.model, result, "no update keys configured: set [updates] public_keys"
        )
        assert reload(agent, agent_bundle).ok  # the operator's local reload works as before


def test_twenty_updates_and_reloads_leave_no_temporary_files(tmp_path, agent_bundle, files, key):
    with make_agent(tmp_path, agent_bundle, key, max_bytes=MIB) as agent:
        state = agent.cfg.state_dir
        top_level = sorted(p.name for p in state.iterdir())
        good = {v: bundle_archive(tmp_path, agent_bundle, v, key) for v in ("2", "3", "4")}
        urls = {v: files.serve(f"v{v}", body) for v, body in good.items()}
        bad = refused_cases(tmp_path, agent_bundle, key, files)
        outcomes = []
        for i in range(20):
            if i % 5 == 4:
                outcomes.append(reload(agent, agent_bundle if i % 2 else tmp_path / "nope").ok)
            elif i % 2 == 0:
                v = "234"[i % 3]
                outcomes.append(update(agent, urls[v], sha(good[v]), f"u{i}").ok)
            else:
                _, source, digest, _ = bad[i % len(bad)]
                outcomes.append(update(agent, source, digest, f"b{i}").ok)
        assert True in outcomes and False in outcomes
        assert list(state.rglob(f"{DOWNLOAD_PREFIX}*")) == []
        assert sorted(p.name for p in state.iterdir()) == top_level
        bundles = state / "bundles"
        for path in bundles.iterdir():
            assert path.name == ACTIVE or (path.is_dir() and verify(path)), path
        store = BundleStore(bundles)
        assert store.current() == agent.model.folder
        assert len(store.installed()) <= store.keep + 2


def test_a_bundle_that_fails_on_probation_is_rolled_back(tmp_path, agent_bundle, files, key):
    with make_agent(tmp_path, agent_bundle, key, probation_s=600) as agent:
        run_windows(agent, 3)
        first = agent.model.folder
        body = bundle_archive(tmp_path, agent_bundle, "2", key)
        assert update(agent, files.serve("b", body), sha(body)).ok

        def broken(x):
            raise RuntimeError("onnxruntime: invalid shape")

        agent.model.backend.embed = broken  # the new bundle fails on real windows
        run_windows(agent, 3)  # no exception: rolled back, then the old bundle runs
        assert agent.model.folder == first and agent.model.manifest.model_version == "1"
        assert all(ch.model is agent.model for ch in agent.channels)
        store = BundleStore(agent.cfg.state_dir / "bundles")
        assert store.current() == first
        notices = [e for e in agent.link.events if e.kind == "agent"]
        assert len(notices) == 1 and notices[0].severity == "warning"
        assert "bundle tiny 2 failed on probation (the backend raised: onnxruntime: invalid " in (
            notices[0].message
        )
        assert notices[0].message.endswith("rolled back to tiny 1")
        assert notices[0].model_version == "1"
        assert not agent.probation.active


def test_outside_probation_a_backend_failure_is_raised_as_before(
    tmp_path, agent_bundle, files, key
):
    with make_agent(tmp_path, agent_bundle, key, probation_s=0) as agent:
        body = bundle_archive(tmp_path, agent_bundle, "2", key)
        assert update(agent, files.serve("b", body), sha(body)).ok
        assert not agent.probation.active

        def broken(x):
            raise RuntimeError("onnxruntime: invalid shape")

        agent.model.backend.embed = broken
        with pytest.raises(RuntimeError, match="invalid shape"):
            run_windows(agent, 3)
        assert agent.model.manifest.model_version == "2"


def test_an_update_survives_a_restart_until_the_config_names_another_bundle(
    tmp_path, agent_bundle, files, key
):
    with make_agent(tmp_path, agent_bundle, key) as agent:
        body = bundle_archive(tmp_path, agent_bundle, "2", key)
        assert update(agent, files.serve("tiny-2.tar.gz", body), sha(body)).ok
    with make_agent(tmp_path, agent_bundle, key) as again:  # a reboot: same config
        assert again.model.manifest.model_version == "2"
        run_windows(again, 3)
    newer = tmp_path / "configured-3"
    shutil.copytree(agent_bundle, newer)
    manifest = json.loads((newer / MANIFEST).read_text())
    manifest["model_version"] = "3"
    (newer / MANIFEST).write_text(json.dumps(manifest))
    verify(newer)
    with make_agent(tmp_path, newer, key) as redeployed:  # the operator configures a new bundle
        assert redeployed.model.manifest.model_version == "3"
    with make_agent(tmp_path, newer, key) as steady:
        assert steady.model.manifest.model_version == "3"
        store = BundleStore(steady.cfg.state_dir / "bundles")
        assert json.loads((store.root / ACTIVE).read_text())["origin"] == "config"


def test_an_update_over_the_broker_is_answered_and_the_status_tells(
    tmp_path, agent_bundle, files, key, mosquitto, collect
):
    """The same command as SCADA sends it: through a real mosquitto to a running agent."""
    from tests.edge_agent.agent.test_agent import BASE, running, send

    collector = collect(mosquitto.port, BASE + "#")
    keys = [str(write_public(key, tmp_path / "fleet.pub.pem"))]
    path = write_config(
        tmp_path / "dev", agent_bundle, mosquitto.port, source=simulator_source(NORMAL),
        decisions=NO_DRIFT, updates={"public_keys": keys}, telemetry_interval_s=0.3,
    )  # fmt: skip
    good = bundle_archive(tmp_path, agent_bundle, "2", key)
    unsigned = bundle_archive(tmp_path, agent_bundle, "3", None)
    with Agent(load_config(path)) as agent, running(agent):
        collector.wait_for(BASE + "status", lambda p: p["status"] == "online")
        body = {"id": "u1", "source": files.serve("unsigned.tar.gz", unsigned),
                "sha256": sha(unsigned)}  # fmt: skip
        refused = send(collector, "update_bundle", body)
        assert not refused["ok"] and "kept the running bundle" in refused["message"]
        body = {"id": "u2", "source": files.serve("tiny-2.tar.gz", good), "sha256": sha(good)}
        done = send(collector, "update_bundle", body)
        assert done["ok"] and done["data"]["model_version"] == "2", done
        assert collector.wait_for(BASE + "state", lambda p: p["model_version"] == "2")
        status = send(collector, "status", {"id": "s1"})["data"]
        assert status["model_version"] == "2"
