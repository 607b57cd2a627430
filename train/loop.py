"""The recipe: `pretrain(cfg, split)` (SimCLR on the unlabeled pool) and `finetune(cfg, split,
encoder)` (frozen probe, then end-to-end at a lower rate, then temperature scaling, then the
physics view where it is reliable). Each is a visible loop: batch, forward, loss, step, log.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from edge_agent.physics.spectral import SpectralHead
from edge_agent.pipeline.head import softmax
from train.augment import build_pipeline
from train.collapse import check_collapse, embedding_stats
from train.config import TrainConfig
from train.encoder import build_encoder
from train.heads import (
    ClassifierHead,
    MultiTaskHead,
    ProjectionHead,
    fit_temperature,
    to_numpy_head,
)
from train.losses import NTXentLoss, SupConLoss, VICRegLoss
from train.monitor import EpochSelector, scored_classes
from train.multitask import TaskTargets, build_task_head, task_loss
from train.physics import PhysicsFusion, fit_fused_temperature, fit_physics
from train.spectral import fit_spectral, pool_windows
from train.splits import Split, WindowSet

logger = logging.getLogger(__name__)

FINETUNE_AUGMENTATIONS = ["gain", "noise", "shift", "time_mask"]
MIN_TEMPERATURE = 0.5
WARMUP_STEPS = 2  # pretraining steps left out of the views/s figure


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def encoder_spec(cfg: TrainConfig) -> dict[str, Any]:
    """Name and arguments that rebuild the encoder (stored in every checkpoint)."""
    kwargs: dict[str, Any] = {"embedding_dim": cfg.embedding_dim, "norm": cfg.norm}
    if cfg.encoder == "cnn":
        kwargs["width"] = cfg.width
    return {"name": cfg.encoder, "kwargs": kwargs}


def initial_encoder(cfg: TrainConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The seed's freshly initialized encoder: where pretraining, the supervised baseline and
    the never-pretrained ablation (bench) all start."""
    seed_everything(cfg.seed)
    return build_encoder(cfg.encoder, **encoder_spec(cfg)["kwargs"]).to(device)


def autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar; `advance(loss=...)` moves it. Disabled -> a no-op."""
    if not enabled:
        yield lambda **_: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(**info: float) -> None:
            bar.update(task, advance=1, info=" ".join(f"{k} {v:.4g}" for k, v in info.items()))

        yield advance


@dataclass
class PretrainResult:
    encoder: nn.Module
    projection: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    collapse: dict[str, Any] = field(default_factory=dict)
    views_per_second: float = 0.0
    selection: dict[str, Any] = field(default_factory=dict)  # EpochSelector.summary()


def make_loss(cfg: TrainConfig, gather=None) -> nn.Module:
    if cfg.loss == "ntxent":
        return NTXentLoss(cfg.temperature, gather=gather)
    if cfg.loss == "supcon":
        return SupConLoss(cfg.temperature)
    return VICRegLoss()


def pool_batches(sample: Callable[[], np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
    """Endless pool batches on `device`. On CUDA the next batch is cropped and normalized on a
    thread (numpy releases the GIL) and copied from pinned memory while the GPU trains on this
    one; on CPU that thread would only take a core from the training step."""
    if device.type != "cuda":
        while True:
            yield torch.from_numpy(sample())

    def load() -> torch.Tensor:
        return torch.from_numpy(sample()).pin_memory()

    with ThreadPoolExecutor(max_workers=1) as executor:
        pending = executor.submit(load)
        while True:
            batch = pending.result()
            pending = executor.submit(load)
            yield batch.to(device, non_blocking=True)


def pretrain(
    cfg: TrainConfig,
    split: Split,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    dist: Any = None,
    show_progress: bool = True,
    collapse_check: bool = True,
) -> PretrainResult:
    """SimCLR pretraining on the split's unlabeled pool; saves `checkpoint` after every epoch.
    With cfg.pretrain_monitor the encoder returned (and saved last) is the epoch that scored best
    on the labeled windows (train.monitor), and training stops monitor_patience epochs after it.

    `dist` is a train.distributed.DistContext for multi-process runs (torchrun), else None.
    `collapse_check=False` skips the embedding-spread check (speed runs on random data, where
    a collapsed encoder is expected and says nothing about the recipe).
    """
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    device = dist.device if dist else pick_device(cfg.device)
    encoder = initial_encoder(cfg, device)
    projection = ProjectionHead([cfg.embedding_dim, *cfg.projection_dims]).to(device)
    params = [*encoder.parameters(), *projection.parameters()]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr * math.sqrt(world), weight_decay=cfg.weight_decay
    )
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(split.pool) // (cfg.batch_size * world))
    total = cfg.epochs * steps_per_epoch
    warmup = min(total // 10, 200)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / max(1, warmup))
            * 0.5
            * (1 + math.cos(math.pi * min(s, total) / max(1, total)))
        ),
    )
    history: list[dict[str, float]] = []
    start = 0
    watched = split.known()
    selector = None
    if cfg.pretrain_monitor and scored_classes(watched.y, watched.record_ids):
        selector = EpochSelector(watched.y, watched.record_ids, cfg.monitor_patience)
    elif cfg.pretrain_monitor:
        logger.info("pretraining monitor off: every class's labels come from one recording")
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        encoder.load_state_dict(state.get("last_encoder_state") or state["encoder_state"])
        projection.load_state_dict(state["projection_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        schedule.load_state_dict(state["schedule_state"])
        start, history = state["step"], state["history"]
        if selector is not None and state.get("selection"):
            selector.restore(state["selection"], state.get("best_encoder_state"))
        if state.get("stopped_early"):
            start = total  # the monitor already stopped this run
        logger.info("resumed pretraining from %s at step %d", checkpoint, start)
    model = nn.Sequential(encoder, projection)
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    if dist is not None and world > 1:
        from train.distributed import gather_with_grad, wrap_ddp

        model = wrap_ddp(model, dist)
        loss_fn = make_loss(cfg, gather=gather_with_grad)
    else:
        loss_fn = make_loss(cfg)
    pipeline = build_pipeline(
        list(cfg.augmentations) if cfg.augmentations else None,
        sample_rate_hz=cfg.sample_rate_hz,
        k_min=cfg.aug_k_min,
        k_max=cfg.aug_k_max,
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank + start)
    rng = np.random.default_rng([cfg.seed, rank, start])
    probe = torch.from_numpy(
        split.pool.sample(min(512, max(64, len(split.pool))), np.random.default_rng(cfg.seed))
    ).to(device)
    labeled_x = torch.from_numpy(split.labeled.x).to(device)
    labeled_y = torch.from_numpy(split.labeled.y).to(device)
    collapse: dict[str, Any] = {}

    def save(steps_done: int, **ending: Any) -> None:
        if checkpoint is not None and rank == 0:
            parts = (optimizer, schedule, steps_done, history, collapse, selector)
            save_pretrain(checkpoint, cfg, encoder, projection, *parts, **ending)

    views, step_seconds = 0, 0.0
    model.train()
    batches = pool_batches(lambda: split.pool.sample(cfg.batch_size, rng), device)
    with progress_bar("pretrain", total - start, show_progress and rank == 0) as advance:
        for step in range(start, total):
            t0 = time.perf_counter()
            x = next(batches)
            labels = torch.full((x.shape[0],), -1, device=device, dtype=torch.long)
            if cfg.loss == "supcon" and len(labeled_x):
                x, labels = torch.cat([x, labeled_x]), torch.cat([labels, labeled_y])
            with torch.no_grad():
                v0, v1 = pipeline(x, gen), pipeline(x, gen)
            with autocast(device, cfg.amp):
                z = model(torch.cat([v0, v1])).float()
            z0, z1 = z.chunk(2)
            loss = loss_fn(z0, z1, labels) if cfg.loss == "supcon" else loss_fn(z0, z1)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"pretraining loss became {loss.item()} at step {step}; lower lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step - start >= WARMUP_STEPS or total - start <= WARMUP_STEPS:
                views += 2 * x.shape[0] * world  # speed excludes warm-up (lazy init, compile)
                step_seconds += time.perf_counter() - t0
            ms = 1000 * (time.perf_counter() - t0)
            record = {
                "step": step + 1,
                "loss": loss.item(),
                "lr": schedule.get_last_lr()[0],
                "ms": ms,
            }
            history.append(record)
            advance(loss=record["loss"])
            if rank == 0 and (step + 1) % cfg.log_every == 0:
                logger.info(
                    "step %d | loss %.3f | lr %.1e | %.0f ms/step",
                    step + 1,
                    record["loss"],
                    record["lr"],
                    ms,
                )
            if (step + 1) % steps_per_epoch == 0 or step + 1 == total:
                if collapse_check:
                    collapse = collapse_report(encoder, probe, cfg.fail_on_collapse)
                stop = False
                if selector is not None:
                    stop = selector.update(
                        math.ceil((step + 1) / steps_per_epoch), embed(encoder, watched.x), encoder
                    )
                    encoder.train()
                save(step + 1)
                if stop:
                    break
    if selector is not None and selector.best_state is not None:
        last = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        encoder.load_state_dict(selector.best_state)
        logger.info(
            "kept epoch %d of pretraining (monitor %.3f)", selector.best_epoch, selector.best_score
        )
        if collapse_check:  # the report describes the encoder served, not the last one trained
            collapse = collapse_report(encoder, probe, False, quiet=True)
        done = history[-1]["step"] if history else 0  # the file serves the kept encoder
        save(done, last_state=last, stopped_early=done < total)
    if collapse_check and not collapse:
        collapse = collapse_report(encoder, probe, cfg.fail_on_collapse)
    speed = views / step_seconds if step_seconds > 0 else 0.0  # training steps only, no checks
    selection = selector.summary() if selector is not None and selector.scores else {}
    return PretrainResult(encoder, projection, history, collapse, speed, selection)


def collapse_report(
    encoder: nn.Module, probe: torch.Tensor, fail: bool, quiet: bool = False
) -> dict[str, Any]:
    """Embedding spread on a fixed probe batch; a collapse is logged loudly (or raised) unless
    `quiet` (the epoch was already checked when it was trained)."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        stats = embedding_stats(encoder(probe).float())
    encoder.train(was_training)
    warning = check_collapse(stats)
    stats = {
        k: float(v) if isinstance(v, (int, float, np.floating)) else v for k, v in stats.items()
    }
    if warning and not quiet:
        logger.error("%s", warning)
        if fail:
            from train.collapse import CollapseError

            raise CollapseError(warning)
    return {**stats, "warning": warning}


def save_pretrain(
    path: Path,
    cfg: TrainConfig,
    encoder,
    projection,
    optimizer,
    schedule,
    step,
    history,
    collapse,
    selector: EpochSelector | None = None,
    last_state: dict[str, torch.Tensor] | None = None,
    stopped_early: bool = False,
) -> None:
    """With `last_state` the encoder state saved is the kept epoch's and `last_state` the one
    training resumes from; `stopped_early`: the monitor ended the run, resuming trains no more."""
    path.parent.mkdir(parents=True, exist_ok=True)
    selected = {}
    if selector is not None:
        selected = {"selection": selector.summary(), "best_encoder_state": selector.best_state}
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "kind": "pretrained",
            "config": cfg.model_dump(mode="json"),
            "encoder": encoder_spec(cfg),
            "encoder_state": _unwrap(encoder).state_dict(),
            "projection_state": projection.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "schedule_state": schedule.state_dict(),
            "step": step,
            "history": history,
            "collapse": collapse,
            "last_encoder_state": last_state,
            "stopped_early": stopped_early,
            **selected,
        },
        tmp,
    )
    tmp.replace(path)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def load_encoder(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild an encoder from any faultwatch checkpoint (pretrained or fine-tuned)."""
    state = torch.load(path, map_location=device, weights_only=False)
    encoder = build_encoder(state["encoder"]["name"], **state["encoder"]["kwargs"])
    encoder.load_state_dict(state["encoder_state"])
    return encoder.to(device)


# ---------------------------------------------------------------------------- fine-tuning


@torch.no_grad()
def embed(encoder: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """Encoder in eval mode over (N, 1, W) windows -> (N, D) float32 numpy."""
    encoder.eval()
    device = next(encoder.parameters()).device
    parts = [
        encoder(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu().numpy()
        for i in range(0, len(x), batch)
    ]
    return (
        np.concatenate(parts)
        if parts
        else np.zeros((0, getattr(encoder, "embedding_dim", 1)), np.float32)
    )


class StandardizedHead(nn.Module):
    """ClassifierHead on per-dimension standardized embeddings: head((x - mean) * scale).

    Pretrained embeddings can be tiny or offset; standardizing them (statistics from the
    unlabeled pool) lets a few labels train the head at the reference learning rate. Export folds
    the affine map into the first layer (`Head.fold_input_affine`).
    """

    def __init__(self, head: ClassifierHead, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", mean.float())
        self.register_buffer("scale", scale.float())

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardize(x))

    def to_numpy(self, temperature: float):
        head = to_numpy_head(self.head, temperature)
        return head.fold_input_affine(self.mean.cpu().numpy(), self.scale.cpu().numpy())


@dataclass
class Classifier:
    """A fine-tuned model: encoder + head + temperature (what evaluation and export need), and
    with multi-head fine-tuning the detection / location / size heads (train.multitask)."""

    encoder: nn.Module
    head: StandardizedHead
    temperature: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list)
    task_head: MultiTaskHead | None = None
    task_targets: TaskTargets | None = None
    physics: PhysicsFusion | None = None
    physics_report: dict[str, Any] = field(default_factory=dict)
    spectral: SpectralHead | None = None
    spectral_report: dict[str, Any] = field(default_factory=dict)
    envelope_labels: dict[str, int] = field(default_factory=dict)  # fine-tune's, per class

    def embed(self, x: np.ndarray) -> np.ndarray:
        return embed(self.encoder, x)

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.head.eval()
        device = next(self.head.parameters()).device
        return self.head(torch.from_numpy(self.embed(x)).to(device)).float().cpu().numpy()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """The model's own probabilities (head and temperature)."""
        return softmax(self.logits(x) / self.temperature)

    def fused_probabilities(self, ws: WindowSet) -> np.ndarray:
        """The recipe's probabilities: the model's, fused with the physics view and then the
        spectral template where training kept them (as the agent fuses them)."""
        probs = self.probabilities(ws.x)
        if self.physics is not None:
            probs = self.physics.fuse(probs, ws)
        if self.spectral is not None:
            probs = self.spectral.fuse(probs, ws.x)
        return probs

    @torch.no_grad()
    def task_probabilities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities of each multi-head task (empty without multi-head fine-tuning)."""
        if self.task_head is None:
            return {}
        self.task_head.eval()
        device = next(self.head.parameters()).device
        features = self.head.standardize(torch.from_numpy(self.embed(x)).to(device))
        return {t: softmax(z.float().cpu().numpy()) for t, z in self.task_head(features).items()}


def balanced_batches(y: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of one class-balanced batch: classes drawn uniformly, then a window of it."""
    classes = np.unique(y)
    picks = rng.choice(classes, size=batch)
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    return np.array([rng.choice(by_class[c]) for c in picks])


def train_classifier(
    cfg: TrainConfig,
    model: Classifier,
    data: WindowSet,
    *,
    epochs: int,
    lr: float,
    train_encoder: bool,
    freeze_bn: bool,
    stage: str,
    show_progress: bool = True,
) -> None:
    """Class-balanced supervised training of the head (and optionally the encoder)."""
    if len(data) == 0 or epochs == 0:
        return
    device = next(model.encoder.parameters()).device
    for p in model.encoder.parameters():
        p.requires_grad_(train_encoder)
    params = list(model.head.parameters()) + (
        list(model.encoder.parameters()) if train_encoder else []
    )
    if model.task_head is not None:
        params += list(model.task_head.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    pipeline = build_pipeline(
        FINETUNE_AUGMENTATIONS, sample_rate_hz=cfg.sample_rate_hz, k_min=1, k_max=2
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 17)
    rng = np.random.default_rng([cfg.seed, 17])
    x_all = torch.from_numpy(data.x).to(device)
    y_all = torch.from_numpy(data.y).to(device)
    steps = epochs * cfg.finetune_steps_per_epoch
    loss_fn = nn.CrossEntropyLoss()
    with progress_bar(stage, steps, show_progress) as advance:
        for step in range(steps):
            idx = torch.from_numpy(balanced_batches(data.y, cfg.finetune_batch, rng)).to(device)
            x = pipeline(x_all[idx], gen)
            model.encoder.train(train_encoder and not freeze_bn)
            model.head.train()
            with torch.set_grad_enabled(train_encoder):
                emb = model.encoder(x)
            loss = loss_fn(model.head(emb), y_all[idx])
            if model.task_head is not None and model.task_targets is not None:
                model.task_head.train()
                features = model.head.standardize(emb)
                loss = loss + cfg.multi_head_weight * task_loss(
                    model.task_head, model.task_targets, features, y_all[idx]
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.history.append({"stage": stage, "step": step + 1, "loss": loss.item()})  # type: ignore[dict-item]
            advance(loss=loss.item())
    for p in model.encoder.parameters():
        p.requires_grad_(True)


def calibrate_temperature(model: Classifier, val: WindowSet) -> float:
    """Temperature scaling on validation windows so max probability is a calibrated confidence."""
    if len(val) < 2:
        logger.warning("no validation windows: temperature left at 1.0")
        return 1.0
    logits = torch.from_numpy(model.logits(val.x))
    fitted = float(fit_temperature(logits, torch.from_numpy(val.y)))
    # a small, perfectly separated validation set drives the NLL optimum towards T -> 0, which
    # would make every window "confident"; never sharpen beyond MIN_TEMPERATURE
    model.temperature = max(fitted, MIN_TEMPERATURE)
    if fitted < MIN_TEMPERATURE:
        logger.info(
            "temperature %.3f clamped to %.2f (validation set separable)", fitted, MIN_TEMPERATURE
        )
    return model.temperature


def new_head(
    cfg: TrainConfig, n_classes: int, device: torch.device, embeddings: np.ndarray | None = None
) -> StandardizedHead:
    """A fresh head; with `embeddings` (N, D), inputs are standardized with their statistics."""
    d = cfg.embedding_dim
    if embeddings is None or len(embeddings) < 2:
        mean, scale = torch.zeros(d), torch.ones(d)
    else:
        mean = torch.from_numpy(embeddings.mean(0))
        scale = 1.0 / torch.from_numpy(embeddings.std(0) + 1e-6)
    head = ClassifierHead(d, cfg.head_hidden, n_classes, cfg.dropout)
    return StandardizedHead(head, mean, scale).to(device)


def envelope_labeled(cfg: TrainConfig, split: Split, pool: WindowSet) -> WindowSet:
    """The pool windows `pool` (`pool_windows`) labeled by their defect lines
    (train.line_labels.record_line_labels), at most `finetune_envelope_labels` per class."""
    from train.data import machine_geometry
    from train.line_labels import record_line_labels

    found, labels = record_line_labels(
        pool,
        split.class_names,
        machine_geometry(cfg),
        cfg.sample_rate_hz,
        cfg.finetune_envelope_labels,
    )
    return WindowSet(pool.x[found], labels, [pool.record_ids[i] for i in found])


def propagate_labels(
    cfg: TrainConfig, model: Classifier, split: Split, limit: int = 4000
) -> WindowSet:
    """Pool windows labeled on the frozen pretrained embeddings by two votes that must not
    disagree (train.neighbors.propagated_labels): label spreading over the kNN graph and a
    unanimous vote of the nearest labeled windows. At most `propagate_cap_per_class` per class.

    The head is not asked to agree: where the few labels miss an operating condition (a load),
    it extrapolates badly while neighbours in the pretrained space stay right.
    """
    from train.neighbors import propagated_labels

    pool = split.pool.windows(limit=limit)
    n = len(split.class_names)
    if len(pool) == 0 or len(split.labeled) == 0:
        return WindowSet.empty(cfg.window)
    label = propagated_labels(model.embed(split.labeled.x), split.labeled.y, model.embed(pool.x))
    rng = np.random.default_rng(cfg.seed)
    keep = np.concatenate(
        [
            rng.permutation(np.flatnonzero(label == c))[: cfg.propagate_cap_per_class]
            for c in range(n)
        ]
    ).astype(int)
    logger.info(
        "label propagation: %d of %d pool windows labeled (%s per class)",
        len(keep),
        len(pool),
        np.bincount(label[keep], minlength=n).tolist(),
    )
    return WindowSet(pool.x[keep], label[keep].astype(np.int64), [pool.record_ids[i] for i in keep])


def finetune(
    cfg: TrainConfig, split: Split, encoder: nn.Module, *, show_progress: bool = True
) -> Classifier:
    """Frozen-encoder probe at probe_lr; optionally propagate the labels to agreeing pool windows
    and add the pool windows labeled by their defect lines (`envelope_labeled`), and probe again
    on the wider set; end-to-end at finetune_lr (BN statistics frozen, since a handful of labels
    cannot re-estimate them); temperature scaling on validation windows; the physics view fused
    in where it proves reliable (train.physics), then the spectral template where the pool looks
    like the labeled machine (train.spectral)."""
    device = next(encoder.parameters()).device
    pool = pool_windows(split)  # cut once: the head's standardization and the envelope labels
    pool_emb = embed(encoder, pool.x)
    n_classes = len(split.class_names)
    model = Classifier(encoder, new_head(cfg, n_classes, device, pool_emb))
    targets = TaskTargets.from_class_names(split.class_names)
    if cfg.multi_head and not targets:
        logger.warning("multi_head: classes %s define no extra task", split.class_names)

    def attach_task_head() -> None:
        if cfg.multi_head and targets:
            model.task_targets = targets
            model.task_head = build_task_head(
                targets, cfg.embedding_dim, cfg.head_hidden, cfg.dropout
            ).to(device)

    def probe(data: WindowSet, stage: str) -> None:
        train_classifier(
            cfg,
            model,
            data,
            epochs=cfg.probe_epochs,
            lr=cfg.probe_lr,
            train_encoder=False,
            freeze_bn=True,
            stage=stage,
            show_progress=show_progress,
        )

    attach_task_head()
    probe(split.labeled, "probe")
    labeled = split.labeled
    if cfg.propagate_labels:
        labeled = WindowSet.concat([labeled, propagate_labels(cfg, model, split)], cfg.window)
    if cfg.finetune_envelope_labels:
        found = envelope_labeled(cfg, split, pool)
        labeled = WindowSet.concat([labeled, found], cfg.window)
        counts = np.bincount(found.y, minlength=n_classes)
        model.envelope_labels = {
            name: int(n) for name, n in zip(split.class_names, counts, strict=True) if n
        }
        logger.info("envelope labels for the fine-tune: %s", model.envelope_labels)
    if len(labeled) > len(split.labeled):  # relearn the head on the wider set first
        model.head = new_head(cfg, n_classes, device, pool_emb)
        attach_task_head()
        probe(labeled, "probe (pool labels)")
    train_classifier(
        cfg,
        model,
        labeled,
        epochs=cfg.finetune_epochs,
        lr=cfg.finetune_lr,
        train_encoder=True,
        freeze_bn=cfg.finetune_freeze_bn,
        stage="finetune",
        show_progress=show_progress,
    )
    calibrate_temperature(model, split.val)
    fusion, model.physics_report = fit_physics(cfg, split.labeled, split.val, n_classes)
    if fusion is not None:
        probs = model.probabilities(split.val.x)
        model.physics = fit_fused_temperature(fusion, probs, split.val, MIN_TEMPERATURE)
    logger.info("physics view: %s", model.physics_report["reason"])
    model.spectral, model.spectral_report = fit_spectral(
        cfg,
        split,
        model.fused_probabilities(split.val),
        MIN_TEMPERATURE,
        model_pool_probs=model.fused_probabilities(pool),
    )
    logger.info("spectral view: %s", model.spectral_report["reason"])
    return model
