"""One sensor channel's window path, without I/O: raw samples -> windows -> decisions.

A `Channel` holds everything that belongs to one bearing: its configuration view (sensor,
bearing, decisions, thresholds, state folder), its device head and head store, the window
buffer, the debounced decisions, the open-set scorer, the event limiter, the condition monitor
(commissioning, drift, health, physics evidence), the embedding log and the calibration set.
The agent pushes samples, takes ready windows in batches, embeds the sensor-valid windows of all
channels in one backend call, and gives each channel its embeddings back:

    checks = channel.check(n)                         # sanity of the first n batch windows
    outcomes = channel.decide(n, checks, embeddings)  # (k, D) for the k windows that passed

Each `WindowOutcome` says what the window decided and what deserves an event; publishing is the
agent's job (`agent.publisher`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_agent.calibration.embedding_log import (
    CALIBRATION_SET_FILE,
    UNCERTAIN_CODE,
    UNKNOWN_CODE,
    CalibrationSet,
    EmbeddingLog,
)
from edge_agent.calibration.headstore import HeadStore
from edge_agent.calibration.monitoring import ConditionMonitor, Finding
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.physics.spectral import BANDS, SpectralHead, log_spectrum, ranked_bands
from edge_agent.physics.view import line_view
from edge_agent.pipeline.decisions import UNCERTAIN, UNKNOWN, Decision, DecisionMachine
from edge_agent.pipeline.event_limit import EventLimiter
from edge_agent.pipeline.openset import OpenSetScorer
from edge_agent.pipeline.ringbuffer import WindowBuffer
from edge_agent.pipeline.runtime import ModelRuntime
from edge_agent.pipeline.sanity import SanityResult, check_window

logger = logging.getLogger(__name__)

EVIDENCE_CONFIDENCE = 0.9  # what a clear defect line (10 dB, 3 readings in a row) stands for


@dataclass
class WindowOutcome:
    """What one window decided, and what of it deserves an event.

    summary: a storm summary of the event limiter that fell due before this window (publish it
    first). announce: the state changed and this hour's event budget allows an event.
    """

    decision: Decision
    probs: np.ndarray | None  # (C,) the model's (fused) probabilities; None: sensor check failed
    check: SanityResult
    basis: str | None  # who decided: model, evidence or both (None: no evidence configured)
    unknown_score: float | None
    findings: list[Finding] = field(default_factory=list)
    summary: str | None = None
    announce: bool = False


class Channel:
    """Per-channel state and decisions (see the module docstring)."""

    def __init__(self, cfg: AgentConfig, model: ModelRuntime) -> None:
        self.cfg = cfg
        self.name = cfg.channel.name if cfg.channel is not None else "main"
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError([f"state_dir: cannot create {cfg.state_dir} ({exc})"]) from exc
        self.store = HeadStore(cfg.state_dir / "heads")
        self.windows_total = 0
        self.events_total = 0
        self.last_event_id: str | None = None
        self.shown_state: str | None = None  # state published outside the DecisionMachine
        self.basis: str | None = None  # who decided the latest window (model/evidence/both)
        self.unknown_score: float | None = None  # open-set score of the latest window
        self.bind(model)

    # ---- model and head ---------------------------------------------------------------------

    def bind(self, model: ModelRuntime) -> None:
        """Run `model` (start-up, reload_bundle): the device head from the store, fresh state."""
        self.store.init_from_factory(model.factory, model.manifest.model_version)
        self.model = model
        self.head_version, self.head = self.store.current()
        self._build(model)

    def use_head(self) -> None:
        """Switch to the store's current head (after calibrate/rollback); decisions restart."""
        self.head_version, self.head = self.store.current()
        self.decisions.reset()

    @property
    def factory_head(self) -> bool:
        """The head's classifier is still the factory's (no operator labels refit it here)."""
        f = self.model.factory
        return np.array_equal(self.head.w2, f.w2) and np.array_equal(self.head.b2, f.b2)

    def _build(self, model: ModelRuntime) -> None:
        cfg, manifest, spec = self.cfg, model.manifest, model.spec
        d = cfg.decisions
        self.spec = spec
        self.unknown_above = cfg.inference.unknown_above or manifest.thresholds.unknown_above
        self.openset: OpenSetScorer | None = None
        if self.unknown_above is not None:
            try:
                self.openset = OpenSetScorer(manifest.reference_stats)
            except ValueError as exc:
                logger.warning("open-set decisions off: %s", exc)
                self.unknown_above = None
        self.decisions = DecisionMachine(
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
        size = cfg.inference.batch_windows
        chunk = max(getattr(cfg.source, "chunk_samples", 0), getattr(cfg.source, "blocksize", 0))
        capacity = max(64, 2 * size, chunk // spec.hop + 2)  # one chunk never overruns
        self.buffer = WindowBuffer.from_spec(spec, capacity_windows=capacity)
        self.limiter = EventLimiter(manifest.normal_class, d.max_events_per_hour)
        stride = max(1, math.ceil(spec.window / spec.hop))
        self.monitor = ConditionMonitor(cfg, manifest, stride=stride)
        view_bands = min(BANDS, spec.window // 2) if cfg.embedding_log_views else 0
        self.log = EmbeddingLog(cfg.embedding_log_rows, manifest.embedding_dim, view_bands)
        self.calibration_set = CalibrationSet(
            cfg.state_dir / CALIBRATION_SET_FILE,
            manifest.model_version,
            manifest.class_names,
            manifest.embedding_dim,
        )
        self.batch = np.zeros((size, spec.window), dtype=np.float32)  # raw windows in g
        self.batch_t = np.zeros(size)  # window end times, s
        self._no_probabilities = np.zeros(len(manifest.class_names))
        self._codes = {
            UNCERTAIN: UNCERTAIN_CODE,
            UNKNOWN: UNKNOWN_CODE,
            **{c: i for i, c in enumerate(manifest.class_names)},
        }

    def reset_buffer(self) -> None:
        """An empty window buffer (after a source restart: no window spans the gap)."""
        self.buffer = WindowBuffer.from_spec(self.spec, self.buffer.capacity_windows)

    # ---- windows ----------------------------------------------------------------------------

    def check(self, n: int) -> list[SanityResult]:
        """Sensor checks of the first `n` batch windows (raw g, before normalization)."""
        s = self.cfg.sensor
        return [
            check_window(
                self.batch[i], clip_g=s.clip_g, min_rms_g=s.min_rms_g, max_rms_g=s.max_rms_g
            )
            for i in range(n)
        ]

    def decide(
        self, n: int, checks: list[SanityResult], emb: np.ndarray | None
    ) -> list[WindowOutcome]:
        """Decisions of the first `n` batch windows; `emb` (k, D): the windows that passed."""
        ok = [i for i, c in enumerate(checks) if c.ok]
        probs = views = None
        novel = unknown = labeled = np.zeros(0)
        factory_head = self.factory_head  # once per batch: the head changes between batches
        if ok:
            assert emb is not None and len(emb) == len(ok)
            probs = self.head.probabilities(emb)
            probs = self._fuse_physics(probs, self.batch[ok])
            template = self.template(factory_head)
            reach = self.head.reach if self._asks_reach else None
            if template is not None or reach is not None or self.log.view_bands:
                level = log_spectrum(self.batch[ok], BANDS)  # once for the log and the template
                views = ranked_bands(level)
            if template is not None:
                if level.shape[1] == template.bands:
                    probs = template.fuse_spectra(probs, level, views)
                else:  # a template of fewer bands
                    probs = template.fuse(probs, self.batch[ok])
            labeled = np.full(len(ok), not factory_head)  # no reach: labels vouch everywhere
            if reach is not None and views is not None and views.shape[1] == reach.bands:
                labeled = reach.covers(views)
            if self.openset is not None:
                unknown = self.openset.score(self.head.adapt(emb))
                threshold = self.unknown_threshold()
                novel = unknown > threshold if threshold is not None else np.zeros(len(ok), bool)
        codes = np.empty(len(ok), dtype=np.int16)  # label code of each embedded window
        outcomes = []
        j = 0
        for i, check in enumerate(checks):
            t_end = float(self.batch_t[i])
            if check.ok:
                assert probs is not None and emb is not None
                steered = self._steer(probs[j], factory_head, bool(labeled[j]))
                self.unknown_score = float(unknown[j]) if len(unknown) else None
                decision = self.decisions.update(
                    steered,
                    sanity_ok=True,
                    t=t_end,
                    novel=bool(len(novel) and novel[j]),
                    prompt=self.basis == "evidence" and factory_head,  # else: dwell
                )
                codes[j] = self._codes[decision.label]
                findings = self._monitor(decision, self.batch[i], emb[j])
                row = probs[j]
                j += 1
            else:
                decision = self.decisions.update(
                    self._no_probabilities, sanity_ok=False, sanity_reason=check.reason, t=t_end
                )
                findings, row = [], None
            summary = self.limiter.summary(decision.t)
            announce = decision.changed and self.limiter.allow(decision.state, decision.t)
            outcomes.append(
                WindowOutcome(
                    decision,
                    row,
                    check,
                    self.basis,
                    self.unknown_score,
                    findings,
                    summary,
                    announce,
                )
            )
        if ok:
            logged = views is not None and views.shape[1] == self.log.view_bands
            self.log.append(emb, self.batch_t[ok], codes, views if logged else None)
        self.windows_total += n
        return outcomes

    def template(self, factory_head: bool) -> SpectralHead | None:
        """The spectral template fused with the head: the device's own (fitted with its labels)
        or, while the head is the factory's, the bundle's; the bundle's describes the training
        machine, which a refitted head has left."""
        if self.head.template is not None:
            return self.head.template
        return self.model.spectral if factory_head else None

    @property
    def template_source(self) -> str | None:
        """Whose spectral template the channel fuses: 'device', 'bundle' or None."""
        template = self.template(self.factory_head)
        if template is None:
            return None
        return "device" if template is self.head.template else "bundle"

    def unknown_threshold(self) -> float | None:
        """The config's fixed open-set threshold, else the commissioned one (see monitoring)."""
        if self.openset is None:
            return None
        fixed = self.cfg.inference.unknown_above
        return fixed if fixed is not None else self.monitor.unknown_threshold(self.unknown_above)

    def _fuse_physics(self, probs: np.ndarray, windows_g: np.ndarray) -> np.ndarray:
        """The device head's probabilities fused with the bundle's physics view, when the bearing
        is configured (the evidence stream exists) and its shaft speed known; else unchanged."""
        physics, evidence = self.model.physics, self.monitor.evidence
        shaft_hz = evidence.known_shaft_hz() if evidence is not None else None
        if physics is None or evidence is None or shaft_hz is None:
            return probs
        view = line_view(
            windows_g, self.spec.sample_rate_hz, shaft_hz, evidence.geometry, physics.band_hz
        )
        return physics.fuse(probs, view)

    @property
    def _asks_reach(self) -> bool:
        """Whether who decides a window depends on the labels' reach: a calibrated head with
        one, and an evidence stream that follows lines beyond it."""
        evidence = self.monitor.evidence
        return (
            self.head.reach is not None
            and evidence is not None
            and evidence.cfg.follow_evidence == "unlabeled"
        )

    def _steer(self, probs: np.ndarray, factory_head: bool, labeled: bool) -> np.ndarray:
        """The probabilities the decisions see (`steered`), and who decided (`self.basis`)."""
        evidence = self.monitor.evidence
        if evidence is None:
            self.basis = None
            return probs
        names = self.decisions.class_names
        self.basis, override = evidence.basis(names[int(probs.argmax())], factory_head, labeled)
        return steered(probs, names, self.basis, override)

    def _monitor(self, decision: Decision, window: np.ndarray, emb: np.ndarray) -> list[Finding]:
        """Commissioning, drift and health of one valid window."""
        normal = self.decisions.normal_class
        decided_normal = decision.state == normal and decision.label == normal
        return self.monitor.window(
            window, emb, decision.state, decided_normal, decision.t, self.unknown_score
        )


def steered(
    probs: np.ndarray, names: Sequence[str], basis: str, override: str | None
) -> np.ndarray:
    """The model's probabilities, or EVIDENCE_CONFIDENCE on the line's class where a clear
    defect line decides (`override`, from `EvidenceStream.basis`) or confirms an unsure model."""
    top = int(probs.argmax())
    if basis == "both" and probs[top] < EVIDENCE_CONFIDENCE:
        override = names[top]
    if override is None or override not in names:
        return probs
    out = np.full_like(probs, (1.0 - EVIDENCE_CONFIDENCE) / (len(probs) - 1))
    out[names.index(override)] = EVIDENCE_CONFIDENCE
    return out
