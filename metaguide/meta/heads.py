"""Proto-MAML: per-category linear heads that start from the prototypes and are fine-tuned.

A nearest-prototype classifier is a linear one: ``-||z - c||^2 = 2 c.z - ||c||^2 - ||z||^2``,
and the last term is the same for every category. So category ``c`` gets a head with weights
``2 c`` and bias ``-||c||^2`` that classifies exactly as its prototype does, and a few gradient
steps on a platform's labelled examples can then move it where the examples say
(Triantafillou et al., "Meta-Dataset", ICLR 2020). What is meta-learned is what makes those
few steps work across platforms: the low-rank adapter that maps base embeddings into the
space where the heads live, the step size and the temperature. Meta-training runs the
fine-tuning inside each episode (differentiably: the head is small) and steps the meta-learned
parameters on the query loss after it.

A head is stored as a residual on its prototype: ``(2 c + dw, -||c||^2 + db)``. Serving adds
``z.dw + db`` to the prototype's score, with ``c`` the live prototype, so a prototype that
moves with new examples keeps its correction, and a category that has no residual yet (it
arrived after the training round) is classified from its prototype at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaguide.meta.maml import Adapter, EarlyStopping, Episode, EpisodeSampler

__all__ = [
    "HeadConfig",
    "HeadModel",
    "HeadReport",
    "Residuals",
    "fine_tune",
    "fit_residuals",
    "head_accuracy",
    "head_logits",
    "judge",
    "meta_train_heads",
]


@dataclass
class HeadConfig:
    rank: int = 16
    n_way: int = 20
    shots: tuple[int, ...] = (1, 5, 10)  # each training episode draws one of these
    q_query: int = 10
    steps: int = 10  # fine-tuning steps of the heads, in training and at serving
    step_size: float = 0.1  # initial value; meta-learned
    temperature: float = 0.1  # initial value; meta-learned
    outer_lr: float = 1e-3  # the adapter's
    scalar_lr: float = 2e-2  # the log step size's and the log temperature's
    meta_batch: int = 4
    episodes: int = 4000
    val_every: int = 400
    val_episodes: int = 30  # per shot count
    patience: int = 3
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HeadModel:
    """What meta-training learns: the adapter, the step size and the temperature."""

    adapter: Adapter
    step_size: float
    temperature: float
    steps: int

    def without_adapter(self) -> HeadModel:
        """The same fine-tuning on the base embeddings (the adapter's identity)."""
        return HeadModel(
            Adapter.identity(self.adapter.dim, self.adapter.rank),
            self.step_size,
            self.temperature,
            self.steps,
        )

    def to_json(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "temperature": self.temperature, "steps": self.steps}


@dataclass
class Residuals:
    """A platform's fine-tuned heads as residuals on its prototypes (rows of ``dw``, ``db``
    in the order of ``names``), in the adapted space."""

    names: list[str]
    dw: np.ndarray  # (categories, dim) float32
    db: np.ndarray  # (categories,) float32

    def for_names(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Residual rows for ``names`` (zeros for a category without a head)."""
        index = {n: i for i, n in enumerate(self.names)}
        dw = np.zeros((len(names), self.dw.shape[1]), dtype=np.float32)
        db = np.zeros(len(names), dtype=np.float32)
        for row, name in enumerate(names):
            i = index.get(name)
            if i is not None:
                dw[row], db[row] = self.dw[i], self.db[i]
        return dw, db


def _apply(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x + (x @ v) @ u.T


def _means(z: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, z.shape[1], dtype=z.dtype).index_add_(0, y, z)
    return sums / torch.bincount(y, minlength=n).clamp(min=1)[:, None].to(z)


def fine_tune(
    z: torch.Tensor,
    y: torch.Tensor,
    n_way: int,
    *,
    steps: int,
    step_size: torch.Tensor | float,
    temperature: torch.Tensor | float,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heads from the prototypes of ``z``, then ``steps`` gradient steps on the examples'
    cross-entropy: (weights, biases, prototypes). ``create_graph`` keeps the steps
    differentiable (meta-training); otherwise the result is detached."""
    protos = _means(z, y, n_way)
    w, b = 2 * protos, -(protos * protos).sum(1)
    if not create_graph:
        z, w, b = z.detach(), w.detach().requires_grad_(True), b.detach().requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy((z @ w.T + b) / temperature, y)
        gw, gb = torch.autograd.grad(loss, [w, b], create_graph=create_graph)
        w, b = w - step_size * gw, b - step_size * gb
    if not create_graph:
        w, b, protos = w.detach(), b.detach(), protos.detach()
    return w, b, protos


def head_logits(
    model: HeadModel, support: torch.Tensor, support_y: torch.Tensor, n_way: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fine-tune on a support set; returns the query scorer (logits before temperature)."""
    u, v = (torch.from_numpy(a) for a in (model.adapter.u, model.adapter.v))
    with torch.enable_grad():
        w, b, _ = fine_tune(
            _apply(u, v, support),
            support_y,
            n_way,
            steps=model.steps,
            step_size=model.step_size,
            temperature=model.temperature,
        )
    return lambda q: _apply(u, v, q) @ w.T + b


def head_accuracy(
    model: HeadModel, x: np.ndarray | torch.Tensor, episodes: Sequence[Episode]
) -> np.ndarray:
    """Per-episode query accuracy of the fine-tuned heads."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for ep in episodes:
        s, q = xt[torch.from_numpy(ep.support)], xt[torch.from_numpy(ep.query)]
        score = head_logits(model, s, torch.from_numpy(ep.support_y), ep.n_way)
        with torch.no_grad():
            out.append(float((score(q).argmax(1) == torch.from_numpy(ep.query_y)).float().mean()))
    return np.array(out)


def fit_residuals(model: HeadModel, x: np.ndarray, categories: Sequence[str]) -> Residuals:
    """A platform's heads, fine-tuned on its labelled examples (rows of ``x``), as residuals
    on the prototypes of the same examples."""
    names = sorted(set(categories))
    index = {n: i for i, n in enumerate(names)}
    y = torch.tensor([index[c] for c in categories])
    u, v = (torch.from_numpy(a) for a in (model.adapter.u, model.adapter.v))
    z = _apply(u, v, torch.as_tensor(x, dtype=torch.float32))
    with torch.enable_grad():
        w, b, protos = fine_tune(
            z,
            y,
            len(names),
            steps=model.steps,
            step_size=model.step_size,
            temperature=model.temperature,
        )
    dw = (w - 2 * protos).numpy().astype(np.float32)
    db = (b + (protos * protos).sum(1)).numpy().astype(np.float32)
    return Residuals(names, dw, db)


# --------------------------------------------------------------------------- meta-training


@dataclass
class HeadReport:
    model: HeadModel
    config: HeadConfig
    episodes_run: int
    best_episode: int
    val_accuracy_start: float
    val_accuracy: float
    curve: list[dict[str, float | None]] = field(default_factory=list)


def _samplers(
    labels: Sequence[str],
    groups: Sequence[str],
    categories: Sequence[str],
    *,
    n_way: int | None,
    shots: Sequence[int],
    q_query: int,
    seed: int,
) -> list[EpisodeSampler]:
    """One sampler per (group, shot count) that can make episodes: each episode comes from
    one group (platform), so the heads learn to tell apart what one platform sells."""
    wanted = set(categories)
    out = []
    for g_i, group in enumerate(sorted(set(groups))):
        own = sorted({lab for lab, g in zip(labels, groups, strict=True) if g == group} & wanted)
        # labels are per group already when they are prototype keys; otherwise a category
        # shared by groups is sampled from its rows in this group only
        rows = [lab if g == group else "" for lab, g in zip(labels, groups, strict=True)]
        for k in shots:
            try:
                out.append(
                    EpisodeSampler(
                        rows,
                        own,
                        n_way=None if n_way is None else min(n_way, len(own)),
                        k_shot=k,
                        q_query=q_query,
                        seed=seed + 31 * g_i + k,
                    )
                )
            except ValueError:
                continue  # this group has too few categories with that many examples
    return out


def meta_train_heads(
    x: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str],
    train_categories: Sequence[str],
    val_categories: Sequence[str],
    config: HeadConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> HeadReport:
    """Proto-MAML over episodes of single groups (platforms), early-stopped on meta-val.

    Each step: ``meta_batch`` episodes, each of one group and one shot count; heads from the
    adapted support's prototypes, fine-tuned ``steps`` times (kept differentiable); the query
    cross-entropy after fine-tuning steps the adapter, the log step size and the log
    temperature. Deterministic for a given seed.
    """
    cfg = config or HeadConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    start = Adapter.identity(xt.shape[1], cfg.rank, seed=cfg.seed)
    u = torch.from_numpy(start.u.copy()).requires_grad_(True)
    v = torch.from_numpy(start.v.copy()).requires_grad_(True)
    log_step = torch.tensor(math.log(cfg.step_size), requires_grad=True)
    log_temp = torch.tensor(math.log(cfg.temperature), requires_grad=True)
    opt = torch.optim.Adam(
        [
            {"params": [u, v], "lr": cfg.outer_lr},
            {"params": [log_step, log_temp], "lr": cfg.scalar_lr},
        ]
    )
    train = _samplers(
        labels,
        groups,
        train_categories,
        n_way=cfg.n_way,
        shots=cfg.shots,
        q_query=cfg.q_query,
        seed=cfg.seed,
    )
    if not train:
        raise ValueError("no group has two training categories with enough examples")
    val = [
        ep
        for s in _samplers(
            labels,
            groups,
            val_categories,
            n_way=None,
            shots=cfg.shots,
            q_query=cfg.q_query,
            seed=cfg.seed + 1,
        )
        for ep in s.episodes(max(1, cfg.val_episodes // max(1, len(set(groups)))))
    ]

    def current() -> HeadModel:
        return HeadModel(
            Adapter.from_tensors({"u": u, "v": v}),
            float(log_step.detach().exp()),
            float(log_temp.detach().exp()),
            cfg.steps,
        )

    def val_acc(model: HeadModel) -> float:
        return float(head_accuracy(model, xt, val).mean()) if val else 0.0

    initial = current()
    stop = EarlyStopping(
        initial,
        val_acc(initial),
        every=cfg.val_every,
        limit=cfg.episodes,
        patience=cfg.patience,
        batch=cfg.meta_batch,
    )
    if progress:
        progress(f"proto-MAML meta-val accuracy at the start: {stop.best_accuracy:.4f}")
    while stop.going:
        opt.zero_grad()
        batch_loss = 0.0
        for _ in range(cfg.meta_batch):
            ep = rng.choice(train).sample()
            s, q = xt[torch.from_numpy(ep.support)], xt[torch.from_numpy(ep.query)]
            sy, qy = torch.from_numpy(ep.support_y), torch.from_numpy(ep.query_y)
            w, b, _ = fine_tune(
                _apply(u, v, s),
                sy,
                ep.n_way,
                steps=cfg.steps,
                step_size=log_step.exp(),
                temperature=log_temp.exp(),
                create_graph=True,
            )
            loss = F.cross_entropy((_apply(u, v, q) @ w.T + b) / log_temp.exp(), qy)
            (loss / cfg.meta_batch).backward()
            batch_loss += float(loss.detach()) / cfg.meta_batch
        opt.step()
        if stop.stepped(batch_loss):
            model = current()
            acc = val_acc(model)
            stop.checked(model, acc)
            if progress:
                progress(
                    f"episodes {stop.seen:>6}  loss {stop.running:.4f}  meta-val accuracy"
                    f" {acc:.4f}  step {model.step_size:.3f}  temperature {model.temperature:.3f}"
                )
    return HeadReport(
        stop.best,
        cfg,
        stop.seen,
        stop.best_at,
        stop.curve[0]["val_accuracy"] or 0.0,
        stop.best_accuracy,
        stop.curve,
    )


# --------------------------------------------------------------------------- the gate


def _raw_scores(
    support: torch.Tensor, support_y: torch.Tensor, n_way: int, q: torch.Tensor
) -> torch.Tensor:
    protos = _means(support, support_y, n_way)
    return 2 * q @ protos.T - (protos * protos).sum(1)


def judge(
    candidates: dict[str, HeadModel],
    x: np.ndarray | torch.Tensor,
    y: Sequence[int] | np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Which candidate, if any, to serve instead of raw prototypes, from labelled examples.

    The examples of each category are dealt into ``folds`` folds; each fold in turn is
    classified by every candidate fine-tuned on the other folds and by raw prototypes of the
    other folds. A candidate's score is the paired per-example difference in correctness
    against raw prototypes; one is served only if the lower end of its 95% interval is above
    zero (the best such lower end wins). A category with fewer than two examples cannot be
    both support and query, so with one example per category nothing is judged: raw
    prototypes (the identity) are served.
    """
    labels = np.asarray(y)
    xt = torch.as_tensor(x, dtype=torch.float32)
    classes = sorted(set(labels.tolist()))
    per_class = {c: np.flatnonzero(labels == c) for c in classes}
    smallest = min((len(v) for v in per_class.values()), default=0)
    if len(classes) < 2 or smallest < 2:
        return {
            "decision": "identity",
            "reason": "too few labels to judge (a category needs two examples)",
            "candidates": {},
        }
    n_folds = min(folds, smallest)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for rows in per_class.values():
        fold_of[rng.permutation(rows)] = np.arange(len(rows)) % n_folds
    index = {c: i for i, c in enumerate(classes)}
    yt = torch.tensor([index[c] for c in labels.tolist()])
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in candidates}
    raw_correct: list[np.ndarray] = []
    for f in range(n_folds):
        s_rows, q_rows = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        s, sy = xt[torch.from_numpy(s_rows)], yt[torch.from_numpy(s_rows)]
        q, qy = xt[torch.from_numpy(q_rows)], yt[torch.from_numpy(q_rows)]
        with torch.no_grad():
            raw = (_raw_scores(s, sy, len(classes), q).argmax(1) == qy).numpy().astype(float)
        raw_correct.append(raw)
        for name, model in candidates.items():
            score = head_logits(model, s, sy, len(classes))
            with torch.no_grad():
                ok = (score(q).argmax(1) == qy).numpy().astype(float)
            diffs[name].append(ok - raw)
    results: dict[str, dict[str, Any]] = {}
    lower: dict[str, float] = {}
    for name, parts in diffs.items():
        d = np.concatenate(parts)
        half = 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d))
        results[name] = {
            "accuracy": round(float(np.concatenate(raw_correct).mean() + d.mean()), 4),
            "difference": {"mean": round(float(d.mean()), 4), "ci95": round(half, 4)},
        }
        lower[name] = float(d.mean()) - half
    raw_acc = round(float(np.concatenate(raw_correct).mean()), 4)
    winners = [n for n in results if lower[n] > 0]
    if not winners:
        return {
            "decision": "identity",
            "reason": "no gain beyond noise",
            "identity": raw_acc,
            "examples": len(labels),
            "candidates": results,
        }
    best = max(winners, key=lambda n: lower[n])
    return {
        "decision": best,
        "reason": "gain beyond noise",
        "identity": raw_acc,
        "examples": len(labels),
        "candidates": results,
    }
