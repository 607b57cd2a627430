"""What the agent runs on: the verified bundle with its backend, factory head and fused views.

`load_runtime()` gives a `ModelRuntime`, shared by every channel (each channel keeps its own
device head, see `pipeline.channel`); the `reload_bundle` command builds a new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge_agent.backends import Backend, load_backend, self_test
from edge_agent.config import AgentConfig, ConfigError, check_against_bundle
from edge_agent.contract.bundle import Manifest, check_bundle
from edge_agent.contract.bundle_store import BundleStore, Origin
from edge_agent.contract.formats import encoder_format
from edge_agent.contract.preprocess import PreprocessSpec
from edge_agent.physics.spectral import SpectralHead
from edge_agent.physics.view import PhysicsHead
from edge_agent.pipeline.decisions import DecisionMachine
from edge_agent.pipeline.head import Head

logger = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    """A verified bundle with its backend, factory head and physics head (shared by channels)."""

    folder: Path
    manifest: Manifest
    factory: Head
    backend: Backend
    physics: PhysicsHead | None = None  # fused with each channel's device head
    spectral: SpectralHead | None = None  # fused only while a channel runs the factory head

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocessing.spec()


def load_runtime(
    cfg: AgentConfig,
    bundle: Path | None = None,
    *,
    source_rate_hz: int | None = None,
    origin: Origin | None = None,
) -> ModelRuntime:
    """Install the bundle in the state folder's `BundleStore`, check it against `cfg`, load the
    backend, self-test it and make it the store's active bundle.

    source_rate_hz: the rate of an already running source, which the bundle must match.
    Touches no head store, and a refused bundle stays inactive, so every channel goes on as it
    was. Raises BundleError, ConfigError (config/bundle mismatch), BackendError or ValueError.
    Without `bundle` (start-up) it runs the config's bundle, or the one an over-the-air update
    installed since, while the config names the same bundle as then (`BundleStore.start_bundle`).
    origin: why the bundle becomes active (default: "config" without `bundle`, else "reload").
    """
    store = BundleStore(cfg.state_dir / "bundles")
    folder = store.install(bundle or cfg.inference.bundle)
    if bundle is None:
        chosen = store.start_bundle(folder)
        if chosen != folder:
            logger.info("running %s, installed over the air (the config names %s, as then)",
                        chosen.name, folder.name)  # fmt: skip
            folder, origin = chosen, origin or "update"
    origin = origin or ("config" if bundle is None else "reload")
    manifest, factory = check_bundle(folder)
    problems = check_against_bundle(cfg, manifest)
    rate = manifest.preprocessing.sample_rate_hz
    if source_rate_hz is not None and rate != source_rate_hz:
        problems.append(
            f"inference.bundle: the bundle needs {rate} Hz but the running source delivers "
            f"{source_rate_hz} Hz; restart the agent to change the sample rate"
        )
    if problems:
        raise ConfigError(problems)
    DecisionMachine.from_manifest(manifest)  # class names usable as states (ValueError if not)
    inference = cfg.inference
    backend = load_backend(
        folder,
        manifest,
        inference.backend,
        inference.threads,
        precision=inference.precision,
        providers=inference.providers,
    )
    encoder = encoder_format(inference.backend, inference.precision).name
    store.activate(folder, lambda f: self_test(f, manifest, backend, encoder), origin)
    physics = manifest.physics.head() if manifest.physics else None
    spectral = manifest.spectral.head() if manifest.spectral else None
    return ModelRuntime(folder, manifest, factory, backend, physics, spectral)
