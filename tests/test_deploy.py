"""deploy/: the installer run for real in a throwaway root, and the unit's systemd exposure.

`install-agent.sh` runs with FAULTWATCH_ROOT=<tmp>/root, stub `systemctl`, `useradd` and `usermod`
first on PATH (they log their arguments and change nothing), and `nobody` as the service user.
The happy path uses the real `faultwatch` CLI on the tiny test bundle; the attacks on the state
dir use a stub CLI (one of them plays the service user while the installer runs), since they are
about what root does to the file system.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge_agent.bundle_fixture import agent_bundle_folder, write_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install-agent.sh"
UNIT = REPO / "deploy" / "faultwatch-agent.service"
UNIT_NAME = UNIT.name
USER = "nobody"  # an existing user: chown resolves names through the real /etc/passwd

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the installer must run as root: it chowns to the service user"
)


def logging_stub(path: Path, log: Path) -> None:
    """An executable that appends `name args...` to `log` and exits 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> "{log}"\n')
    path.chmod(0o755)


class Throwaway:
    """A throwaway root for the installer, stub commands and their call log."""

    def __init__(self, base: Path) -> None:
        try:
            entry = pwd.getpwnam(USER)
        except KeyError:
            pytest.skip(f"no user {USER!r} to stand in for the service user")
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.base = base
        self.root = base / "root"
        (self.root / "var" / "lib").mkdir(parents=True)
        (self.root / "var" / "lib").chmod(0o755)  # whatever the umask: root's alone
        self.state = self.root / "var" / "lib" / "faultwatch"
        self.log = base / "calls.log"
        self.log.touch()
        for name in ("systemctl", "useradd", "usermod"):
            logging_stub(base / "stubs" / name, self.log)
        self.stub_venv = base / "stub-venv"
        logging_stub(self.stub_venv / "bin" / "faultwatch", self.log)

    def install(
        self, config: Path, bundle: Path, venv: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.base / 'stubs'}{os.pathsep}{os.environ['PATH']}",
            "FAULTWATCH_ROOT": str(self.root),
            "FAULTWATCH_VENV": str(venv or self.stub_venv),
            "FAULTWATCH_USER": USER,
        }
        return subprocess.run(
            ["bash", str(SCRIPT), str(config), str(bundle)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self, command: str) -> list[str]:
        """Arguments of each logged call of `command`, in order."""
        lines = self.log.read_text().splitlines()
        return [line.partition(" ")[2] for line in lines if line.split(" ")[0] == command]

    def plant(self, name: str, target: Path) -> None:
        """The service user's move: a symlink at `<state>/name` pointing to `target`."""
        if not self.state.exists():
            self.state.mkdir(mode=0o750)
            os.chown(self.state, self.uid, self.gid)
        (self.state / name).symlink_to(target)

    def racing_cli(self, target: Path) -> Path:
        """A venv whose stub CLI, when asked to verify the staged copy, plays the service user.

        It does what the owner of the state dir can do at that moment: swap the staged copy for a
        symlink to `target` if it lies in the state dir, and point `bundle` at `target`.
        """
        venv = self.base / "racing-venv"
        cli = venv / "bin" / "faultwatch"
        cli.parent.mkdir(parents=True)
        cli.write_text(
            f"""#!/bin/sh
echo "faultwatch $*" >> "{self.log}"
state="{self.state}"
[ "$2" = verify-bundle ] && [ -e "$state" ] || exit 0
case "$3" in "$state"/*) mv "$3" "$state/.moved-away" && ln -s "{target}" "$3" ;; esac
if [ -e "$state/bundle" ] || [ -L "$state/bundle" ]; then mv -T "$state/bundle" "$state/.old"; fi
ln -s "{target}" "$state/bundle"
"""
        )
        cli.chmod(0o755)
        return venv


@pytest.fixture
def throwaway(tmp_path: Path) -> Throwaway:
    return Throwaway(tmp_path)


@pytest.fixture(scope="session")
def agent_bundle(request, tmp_path_factory) -> Path:
    return agent_bundle_folder(request, tmp_path_factory)


def stub_config(base: Path) -> Path:
    """A config for the stub CLI to 'check'."""
    path = base / "agent.toml"
    path.write_text('log_level = "INFO"\n')
    return path


def fake_bundle(folder: Path) -> Path:
    """Two files for the stub CLI to 'verify'."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}\n")
    (folder / "encoder.onnx").write_bytes(b"\0" * 64)
    return folder


def victim(base: Path) -> Path:
    """A root-owned folder outside the state dir, with a 0644 file the installer must not touch."""
    folder = base / "victim"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (folder / "passwd").chmod(0o644)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """name -> (mode, uid, gid, bytes) of a folder and everything under it."""
    out = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(folder))] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---- the happy path, with the real CLI --------------------------------------------------------


@needs_root
def test_install_puts_everything_in_place_with_tight_modes(throwaway, agent_bundle, tmp_path):
    venv = Path(sys.prefix)
    if not (venv / "bin" / "faultwatch").exists():
        pytest.skip(f"{venv}/bin/faultwatch is missing: pip install -e . in this venv")
    installed = throwaway.state / "bundle"
    config = write_config(tmp_path / "cfg", installed, port=1883)
    archive = agent_bundle.parent / f"{agent_bundle.name}.tar.gz"

    result = throwaway.install(config, archive, venv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every checksum matches" in result.stdout  # the real verify-bundle ran

    assert (mode(throwaway.state), throwaway.state.stat().st_uid) == (0o750, throwaway.uid)
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        p.name for p in agent_bundle.iterdir()
    )
    for path in [installed, *installed.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (throwaway.uid, throwaway.gid), path
        assert mode(path) == (0o750 if path.is_dir() else 0o640), path  # never world-readable
    agent_toml = throwaway.root / "etc" / "faultwatch" / "agent.toml"
    assert agent_toml.read_bytes() == config.read_bytes()
    assert (mode(agent_toml), agent_toml.stat().st_uid, agent_toml.stat().st_gid) == (
        0o640,
        0,
        throwaway.gid,
    )
    unit = throwaway.root / "etc" / "systemd" / "system" / UNIT_NAME
    assert unit.read_bytes() == UNIT.read_bytes() and mode(unit) == 0o644
    assert throwaway.calls("systemctl") == [
        "daemon-reload",
        f"enable {UNIT_NAME}",
        f"restart {UNIT_NAME}",
    ]
    assert throwaway.calls("useradd") == []  # the user exists
    if shutil.which("getent") and subprocess.run(["getent", "group", "audio"]).returncode == 0:
        assert throwaway.calls("usermod") == [f"-a -G audio {USER}"]
    assert not list((throwaway.root / "var" / "lib").glob(".faultwatch-bundle.*"))


@needs_root
def test_a_second_install_keeps_the_old_bundle_and_config(throwaway, tmp_path):
    config = stub_config(tmp_path)
    assert throwaway.install(config, fake_bundle(tmp_path / "b1")).returncode == 0
    config.write_text('log_level = "DEBUG"\n')
    (tmp_path / "b2").mkdir()
    shutil.copytree(tmp_path / "b1", tmp_path / "b2" / "bundle")
    (tmp_path / "b2" / "bundle" / "head.npz").write_bytes(b"new")

    result = throwaway.install(config, tmp_path / "b2" / "bundle")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (throwaway.state / "bundle" / "head.npz").read_bytes() == b"new"
    assert not (throwaway.state / "bundle.old" / "head.npz").exists()
    assert (throwaway.state / "bundle.old" / "manifest.json").is_file()
    etc = throwaway.root / "etc" / "faultwatch"
    assert (etc / "agent.toml.bak").read_text() == 'log_level = "INFO"\n'
    assert (etc / "agent.toml").read_text() == 'log_level = "DEBUG"\n'
    assert len(throwaway.calls("systemctl")) == 6


# ---- what the service user may have planted in its state dir ----------------------------------


@needs_root
@pytest.mark.parametrize("when", ["before the install", "while it runs"])
def test_a_symlink_planted_at_the_bundle_is_moved_aside_never_followed(throwaway, tmp_path, when):
    target = victim(tmp_path)
    before = snapshot(target)
    throwaway.plant("bundle", target)  # stands in for a previous bundle
    venv = throwaway.racing_cli(target) if when == "while it runs" else None

    result = throwaway.install(stub_config(tmp_path), fake_bundle(tmp_path / "b"), venv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(target) == before  # no chown, no chmod, no new file through a link
    installed = throwaway.state / "bundle"
    assert installed.is_dir() and not installed.is_symlink()
    assert sorted(p.name for p in installed.iterdir()) == ["encoder.onnx", "manifest.json"]
    assert installed.stat().st_uid == throwaway.uid
    assert (throwaway.state / "bundle.old").readlink() == target  # moved aside as a link


@needs_root
def test_a_symlinked_state_dir_is_refused(throwaway, tmp_path):
    target = victim(tmp_path)
    before = snapshot(target)
    throwaway.state.symlink_to(target)

    result = throwaway.install(stub_config(tmp_path), fake_bundle(tmp_path / "b"))
    assert result.returncode == 1
    assert "is a symlink or not a directory" in result.stderr
    assert snapshot(target) == before
    assert throwaway.calls("systemctl") == []


@needs_root
def test_a_bundle_with_a_symlink_is_refused(throwaway, tmp_path):
    target = victim(tmp_path)
    before = snapshot(target)
    bundle = fake_bundle(tmp_path / "b")
    (bundle / "extra").symlink_to(target / "passwd")

    result = throwaway.install(stub_config(tmp_path), bundle)
    assert result.returncode == 1
    assert "more than plain files and folders: extra" in result.stderr
    assert snapshot(target) == before
    assert not (throwaway.state / "bundle").exists()
    assert not list((throwaway.root / "var" / "lib").glob(".faultwatch-bundle.*"))


@needs_root
def test_a_state_dir_parent_others_can_write_is_refused(throwaway, tmp_path):
    (throwaway.root / "var" / "lib").chmod(0o775)
    result = throwaway.install(stub_config(tmp_path), fake_bundle(tmp_path / "b"))
    assert result.returncode == 1
    assert "writable by group or others" in result.stderr


# ---- static checks ----------------------------------------------------------------------------


def test_install_script_passes_bash_n_and_shellcheck():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt install shellcheck); bash -n passed")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_systemd_exposure_is_at_most_3():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if found is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {result.stderr}")
    assert float(found[1]) <= 3.0, result.stdout
