"""What the agent runs on: the verified bundle with its backend and head, and the window path.

`load_runtime()` gives a `ModelRuntime` (bundle, backend, device head); `build_pipeline()` gives
the per-bundle `Pipeline` state (window buffer, decisions, condition monitor, embedding log,
batch arrays).
Both are rebuilt by the `reload_bundle` command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.agent.log import logger
from edge_agent.backends import Backend, load_backend
from edge_agent.calibration.embedding_log import (
    CALIBRATION_SET_FILE,
    UNCERTAIN_CODE,
    UNKNOWN_CODE,
    CalibrationSet,
    EmbeddingLog,
)
from edge_agent.calibration.headstore import HeadStore
from edge_agent.calibration.monitoring import ConditionMonitor
from edge_agent.config import AgentConfig, ConfigError, check_against_bundle
from edge_agent.contract.bundle import Manifest, load_bundle
from edge_agent.contract.preprocess import PreprocessSpec
from edge_agent.physics.view import PhysicsHead
from edge_agent.pipeline.decisions import UNCERTAIN, UNKNOWN, DecisionMachine
from edge_agent.pipeline.event_limit import EventLimiter
from edge_agent.pipeline.head import Head
from edge_agent.pipeline.openset import OpenSetScorer
from edge_agent.pipeline.ringbuffer import WindowBuffer


@dataclass
class ModelRuntime:
    """A verified bundle with its backend and the device head in use."""

    folder: Path
    manifest: Manifest
    factory: Head
    backend: Backend
    head: Head
    head_version: int
    physics: PhysicsHead | None = (
        None  # fused with the device head's output (edge_agent.physics.view)
    )

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocessing.spec()

    @property
    def factory_head(self) -> bool:
        """The head's classifier is still the factory's (no operator labels refit it here)."""
        return np.array_equal(self.head.w2, self.factory.w2) and np.array_equal(
            self.head.b2, self.factory.b2
        )


def load_runtime(
    cfg: AgentConfig,
    store: HeadStore,
    bundle: Path | None = None,
    *,
    source_rate_hz: int | None = None,
) -> ModelRuntime:
    """Verify the bundle, check it against `cfg`, load the backend, then pick the device head.

    source_rate_hz: the rate of an already running source, which the bundle must match.
    The head store is touched only once everything else passed, so a refused bundle leaves it as
    it was. Raises BundleError, ConfigError (config/bundle mismatch), BackendError or ValueError.
    """
    folder, manifest, factory = load_bundle(
        bundle or cfg.inference.bundle, cfg.state_dir / "bundles"
    )
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
    store.init_from_factory(factory, manifest.model_version)
    version, head = store.current()
    physics = manifest.physics.head() if manifest.physics else None
    return ModelRuntime(folder, manifest, factory, backend, head, version, physics)


@dataclass
class Pipeline:
    """Per-bundle state of the window path (rebuilt by reload_bundle)."""

    spec: PreprocessSpec
    buffer: WindowBuffer
    decisions: DecisionMachine
    openset: OpenSetScorer | None  # unknown score of a window (None: no open-set decision)
    unknown_above: float | None
    limiter: EventLimiter  # state-change events per hour (a storm becomes one summary)
    monitor: ConditionMonitor  # commissioning, drift and health of the channel
    log: EmbeddingLog
    calibration_set: CalibrationSet
    batch: np.ndarray  # (B, W) float32 raw windows in g
    batch_t: np.ndarray  # (B,) window end times, s
    no_probabilities: np.ndarray  # (C,) zeros, for windows that failed the sensor checks
    label_codes: dict[str, int]  # window label -> EmbeddingLog code


def build_pipeline(cfg: AgentConfig, model: ModelRuntime) -> Pipeline:
    """Fresh window-path state for `model`."""
    manifest, spec = model.manifest, model.spec
    names = manifest.class_names
    d = cfg.decisions
    unknown_above = cfg.inference.unknown_above or manifest.thresholds.unknown_above
    openset = None
    if unknown_above is not None:
        try:
            openset = OpenSetScorer(manifest.reference_stats)
        except ValueError as exc:
            logger.warning("open-set decisions off: %s", exc)
    decisions = DecisionMachine(
        manifest.class_names,
        manifest.normal_class,
        d.k,
        d.n,
        cfg.inference.uncertain_below or manifest.thresholds.uncertain_below,
        k_exit=d.k_exit,
        min_dwell_s=d.min_dwell_s,
        hold_fraction=d.hold_fraction,
        uncertain_after_s=d.uncertain_after_s,
    )
    batch = cfg.inference.batch_windows
    chunk = max(getattr(cfg.source, "chunk_samples", 0), getattr(cfg.source, "blocksize", 0))
    capacity = max(64, 2 * batch, chunk // spec.hop + 2)  # one chunk never overruns
    return Pipeline(
        spec=spec,
        buffer=WindowBuffer.from_spec(spec, capacity_windows=capacity),
        decisions=decisions,
        openset=openset,
        unknown_above=unknown_above if openset is not None else None,
        limiter=EventLimiter(manifest.normal_class, d.max_events_per_hour),
        monitor=ConditionMonitor(cfg, manifest, stride=max(1, math.ceil(spec.window / spec.hop))),
        log=EmbeddingLog(cfg.embedding_log_rows, manifest.embedding_dim),
        calibration_set=CalibrationSet(
            cfg.state_dir / CALIBRATION_SET_FILE,
            manifest.model_version,
            manifest.class_names,
            manifest.embedding_dim,
        ),
        batch=np.zeros((batch, spec.window), dtype=np.float32),
        batch_t=np.zeros(batch),
        no_probabilities=np.zeros(len(manifest.class_names)),
        label_codes={
            UNCERTAIN: UNCERTAIN_CODE,
            UNKNOWN: UNKNOWN_CODE,
            **{c: i for i, c in enumerate(names)},
        },
    )
