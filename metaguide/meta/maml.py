"""Meta-learning: episodes, a low-rank adapter around the identity, MAML, fast adaptation.

The adapter maps a base embedding x to ``x + U (V^T x)``, that is ``W x`` with
``W = I + U V^T`` of rank ``r``. It is linear, so the mean of adapted embeddings is the adapted
mean: prototypes stay in base space and a snapshot swap never re-embeds anything. ``U`` starts
at zero, so an untrained adapter is exactly the identity and changes no answer.

Distances in the adapted space are ``||W (x - p)||^2``: the adapter learns a metric. MAML learns
the initialisation of ``(U, V)`` such that a few gradient steps on a task's support set (the
prototypical loss: prototypes from the adapted support, every support point classified
against them) give a metric that classifies that task's query set well.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Adapter",
    "EarlyStopping",
    "Episode",
    "EpisodeSampler",
    "MetaConfig",
    "TrainReport",
    "adapt",
    "category_split",
    "episode_accuracy",
    "fit_logistic",
    "logistic_accuracy",
    "meta_train",
    "proto_loss",
    "torch_threads",
]

Params = dict[str, torch.Tensor]
T = TypeVar("T")


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` for a block, and back after it.

    Meta-learning works on small matrices (episodes of tens to hundreds of rows): extra
    threads only spin against each other and against the encoder's, which on a shared
    machine costs far more than they bring. Training rounds and evaluation episodes run on one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- the adapter


@dataclass
class Adapter:
    """``x -> x + (x V) U^T`` on rows; ``u`` and ``v`` are float32 arrays of shape (dim, rank)."""

    u: np.ndarray
    v: np.ndarray

    @classmethod
    def identity(cls, dim: int, rank: int, seed: int = 0) -> Adapter:
        gen = np.random.default_rng(seed)
        v = (gen.standard_normal((dim, rank)) / math.sqrt(dim)).astype(np.float32)
        return cls(np.zeros((dim, rank), dtype=np.float32), v)

    @property
    def dim(self) -> int:
        return int(self.u.shape[0])

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    def is_identity(self) -> bool:
        return not np.any(self.u) or not np.any(self.v)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Map base vectors (rows) into the adapted space."""
        x = np.asarray(x, dtype=np.float32)
        return x + (x @ self.v) @ self.u.T

    def tensors(self) -> Params:
        return {"u": torch.from_numpy(self.u.copy()), "v": torch.from_numpy(self.v.copy())}

    @classmethod
    def from_tensors(cls, params: Params) -> Adapter:
        return cls(
            params["u"].detach().cpu().numpy().astype(np.float32),
            params["v"].detach().cpu().numpy().astype(np.float32),
        )


def _apply(params: Params, x: torch.Tensor) -> torch.Tensor:
    return x + (x @ params["v"]) @ params["u"].T


def proto_loss(
    params: Params,
    support: torch.Tensor,
    support_y: torch.Tensor,
    query: torch.Tensor,
    query_y: torch.Tensor,
    n_way: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypical loss and accuracy of ``query`` against prototypes of the adapted support."""
    zs, zq = _apply(params, support), _apply(params, query)
    protos = torch.zeros(n_way, zs.shape[1], dtype=zs.dtype).index_add_(0, support_y, zs)
    protos = protos / torch.bincount(support_y, minlength=n_way).clamp(min=1)[:, None].to(zs)
    # squared Euclidean distances (torch.cdist has no second derivative)
    d2 = (zq * zq).sum(1, keepdim=True) - 2 * zq @ protos.T + (protos * protos).sum(1)[None, :]
    logits = -d2 / temperature
    loss = F.cross_entropy(logits, query_y)
    accuracy = (logits.argmax(1) == query_y).float().mean()
    return loss, accuracy


# --------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episode:
    """Indices into the embedding matrix and labels 0..n_way-1 for support and query."""

    support: np.ndarray
    support_y: np.ndarray
    query: np.ndarray
    query_y: np.ndarray
    n_way: int


class EpisodeSampler:
    """N-way K-shot episodes from the items of some categories (``n_way=None``: all of them).

    Support and query of an episode never share an item. Items are expected to be unique
    products already (one row per title), so no product is on both sides.
    """

    def __init__(
        self,
        labels: Sequence[str],
        categories: Sequence[str],
        *,
        n_way: int | None,
        k_shot: int,
        q_query: int,
        seed: int = 0,
    ) -> None:
        wanted = set(categories)
        by_cat: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            if label in wanted:
                by_cat.setdefault(label, []).append(i)
        # a category takes part when it has the support and at least one query item
        self.by_category = {c: v for c, v in sorted(by_cat.items()) if len(v) > k_shot}
        self.categories = list(self.by_category)
        self.n_way = len(self.categories) if n_way is None else n_way
        if self.n_way < 2 or self.n_way > len(self.categories):
            raise ValueError(
                f"{self.n_way}-way episodes need that many categories with more than "
                f"{k_shot} items; there are {len(self.categories)}"
            )
        self.k_shot, self.q_query = k_shot, q_query
        self.rng = random.Random(seed)

    def sample(self) -> Episode:
        chosen = self.rng.sample(self.categories, self.n_way)
        s, sy, q, qy = [], [], [], []
        for label, cat in enumerate(chosen):
            items = self.by_category[cat]
            picked = self.rng.sample(items, min(len(items), self.k_shot + self.q_query))
            s += picked[: self.k_shot]
            sy += [label] * self.k_shot
            q += picked[self.k_shot :]
            qy += [label] * (len(picked) - self.k_shot)
        return Episode(np.array(s), np.array(sy), np.array(q), np.array(qy), self.n_way)

    def episodes(self, n: int) -> list[Episode]:
        return [self.sample() for _ in range(n)]


def category_split(
    labels: Sequence[str],
    *,
    min_items: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Disjoint meta-train / meta-val / meta-test category lists.

    Categories with at least ``min_items`` items are shuffled (seeded) and cut by the given
    fractions; smaller categories only ever join meta-train, where they add variety.
    """
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    big = sorted(c for c, n in counts.items() if n >= min_items)
    small = sorted(c for c, n in counts.items() if n < min_items)
    random.Random(seed).shuffle(big)
    n_test = round(len(big) * test_fraction)
    n_val = round(len(big) * val_fraction)
    return {
        "test": sorted(big[:n_test]),
        "val": sorted(big[n_test : n_test + n_val]),
        "train": sorted(big[n_test + n_val :] + small),
    }


# --------------------------------------------------------------------------- MAML


@dataclass
class MetaConfig:
    rank: int = 16
    n_way: int = 20  # training episodes: higher way than at test time trains a sharper metric
    k_shot: int = 5
    q_query: int = 10
    inner_steps: int = 3
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    meta_batch: int = 4
    episodes: int = 4000  # outer-loop episodes at most
    second_order: bool = False
    temperature: float = 0.05
    weight_decay: float = 0.0  # pull (U, V) towards zero, i.e. the adapter towards the identity
    val_every: int = 200  # episodes between two meta-validation checks (early stopping)
    val_episodes: int = 100
    val_way: int | None = None  # None: every meta-val category in each validation episode
    patience: int = 4  # checks without improvement before stopping
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def adapt(
    params: Params,
    support: torch.Tensor,
    support_y: torch.Tensor,
    n_way: int,
    *,
    steps: int,
    lr: float,
    temperature: float,
    create_graph: bool = False,
) -> Params:
    """The inner loop: ``steps`` gradient steps on the support set's prototypical loss.

    With ``create_graph`` the steps stay differentiable (second-order MAML); without it the
    step's gradient is a constant (first-order MAML, and serving-time adaptation).
    """
    fast = dict(params)
    for _ in range(steps):
        loss, _ = proto_loss(fast, support, support_y, support, support_y, n_way, temperature)
        names = list(fast)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=create_graph)
        fast = {
            n: fast[n] - lr * (g if create_graph else g.detach())
            for n, g in zip(names, grads, strict=True)
        }
    return fast


def _episode_tensors(x: torch.Tensor, ep: Episode) -> tuple[torch.Tensor, ...]:
    return (
        x[torch.from_numpy(ep.support)],
        torch.from_numpy(ep.support_y),
        x[torch.from_numpy(ep.query)],
        torch.from_numpy(ep.query_y),
    )


def episode_accuracy(
    adapter: Adapter | None,
    x: np.ndarray | torch.Tensor,
    episodes: Sequence[Episode],
    *,
    steps: int = 0,
    lr: float = 0.1,
    temperature: float = 0.05,
) -> np.ndarray:
    """Per-episode query accuracy of nearest-prototype classification.

    ``adapter=None``: raw base embeddings. ``steps > 0``: the adapter is first adapted on each
    episode's support set (what a platform's few labels do at serving time).
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for ep in episodes:
        s, sy, q, qy = _episode_tensors(xt, ep)
        if adapter is None:
            params: Params = {
                "u": torch.zeros(xt.shape[1], 1),
                "v": torch.zeros(xt.shape[1], 1),
            }
        else:
            params = {k: t.requires_grad_(steps > 0) for k, t in adapter.tensors().items()}
            if steps:
                params = adapt(params, s, sy, ep.n_way, steps=steps, lr=lr, temperature=temperature)
        with torch.no_grad():
            _, acc = proto_loss(params, s, sy, q, qy, ep.n_way, temperature)
        out.append(float(acc))
    return np.array(out)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3, iterations: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L2-regularised, L-BFGS): weights and biases."""
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def logistic_accuracy(
    x: np.ndarray | torch.Tensor,
    episodes: Sequence[Episode],
    *,
    l2: float = 1e-3,
    iterations: int = 100,
) -> np.ndarray:
    """Per-episode accuracy of multinomial logistic regression fitted on the support set."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for ep in episodes:
        s, sy, q, qy = _episode_tensors(xt, ep)
        w, b = fit_logistic(s, sy, ep.n_way, l2=l2, iterations=iterations)
        out.append(float(((q @ w + b).argmax(1) == qy).float().mean()))
    return np.array(out)


class EarlyStopping(Generic[T]):
    """The outer loop's bookkeeping: a running loss, a validation check every ``every``
    episodes, the best candidate kept, and a stop after ``patience`` checks without a gain
    or at ``limit`` episodes."""

    def __init__(
        self, start: T, start_accuracy: float, *, every: int, limit: int, patience: int, batch: int
    ) -> None:
        self.best, self.best_accuracy, self.best_at = start, start_accuracy, 0
        self.every, self.limit, self.patience, self.batch = every, limit, patience, batch
        self.seen, self.stale, self.steps, self.running = 0, 0, 0, 0.0
        self.curve: list[dict[str, float | None]] = [
            {"episodes": 0, "loss": None, "val_accuracy": start_accuracy}
        ]

    @property
    def going(self) -> bool:
        return self.seen < self.limit and self.stale < self.patience

    def stepped(self, loss: float) -> bool:
        """One outer step of ``batch`` episodes done; True when a validation check is due."""
        self.steps += 1
        self.running = loss if self.steps == 1 else 0.9 * self.running + 0.1 * loss
        before, self.seen = self.seen, self.seen + self.batch
        return self.seen // self.every > before // self.every or self.seen >= self.limit

    def checked(self, candidate: T, accuracy: float) -> None:
        """A validation check's result: kept if it is the best so far."""
        self.curve.append({"episodes": self.seen, "loss": self.running, "val_accuracy": accuracy})
        if accuracy > self.best_accuracy:
            self.best, self.best_accuracy, self.best_at, self.stale = (
                candidate,
                accuracy,
                self.seen,
                0,
            )
        else:
            self.stale += 1


@dataclass
class TrainReport:
    """What meta-training did: the curve, the best validation point, the chosen adapter."""

    adapter: Adapter
    config: MetaConfig
    episodes_run: int
    best_episode: int
    val_accuracy_identity: float
    val_accuracy: float  # of the chosen adapter, after adaptation on each support set
    curve: list[dict[str, float | None]] = field(default_factory=list)
    last: Adapter | None = None  # the parameters when training stopped (the chosen may be older)


def meta_train(
    x: np.ndarray,
    labels: Sequence[str],
    train_categories: Sequence[str],
    val_categories: Sequence[str],
    config: MetaConfig | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    init: Adapter | None = None,
) -> TrainReport:
    """MAML on the adapter, early-stopped on meta-validation episodes.

    The outer loop samples ``meta_batch`` training episodes, adapts a copy of the parameters
    on each support set (the inner loop), and steps the initialisation on the mean query loss
    of the adapted copies. Every ``val_every`` episodes the current initialisation is scored on
    fixed validation episodes (after the same inner loop); the best one is kept, and training
    stops after ``patience`` checks without a gain. Deterministic for a given seed.
    """
    cfg = config or MetaConfig()
    torch.manual_seed(cfg.seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    dim = xt.shape[1]
    start = init or Adapter.identity(dim, cfg.rank, seed=cfg.seed)
    params = {k: t.requires_grad_(True) for k, t in start.tensors().items()}
    opt = torch.optim.Adam(params.values(), lr=cfg.outer_lr, weight_decay=cfg.weight_decay)
    train = EpisodeSampler(
        labels,
        train_categories,
        n_way=cfg.n_way,
        k_shot=cfg.k_shot,
        q_query=cfg.q_query,
        seed=cfg.seed,
    )
    val = EpisodeSampler(
        labels,
        val_categories,
        n_way=cfg.val_way,
        k_shot=cfg.k_shot,
        q_query=cfg.q_query,
        seed=cfg.seed + 1,
    ).episodes(cfg.val_episodes)

    def val_acc(adapter: Adapter | None) -> float:
        return float(
            episode_accuracy(
                adapter,
                xt,
                val,
                steps=cfg.inner_steps if adapter else 0,
                lr=cfg.inner_lr,
                temperature=cfg.temperature,
            ).mean()
        )

    identity_acc = val_acc(None)
    stop = EarlyStopping(
        start,
        val_acc(start),
        every=cfg.val_every,
        limit=cfg.episodes,
        patience=cfg.patience,
        batch=cfg.meta_batch,
    )
    if progress:
        progress(f"meta-val accuracy: raw {identity_acc:.4f}, start {stop.best_accuracy:.4f}")
    while stop.going:
        opt.zero_grad()
        batch_loss = 0.0
        for _ in range(cfg.meta_batch):
            s, sy, q, qy = _episode_tensors(xt, train.sample())
            fast = adapt(
                params,
                s,
                sy,
                cfg.n_way,
                steps=cfg.inner_steps,
                lr=cfg.inner_lr,
                temperature=cfg.temperature,
                create_graph=cfg.second_order,
            )
            loss, _ = proto_loss(fast, s, sy, q, qy, cfg.n_way, cfg.temperature)
            (loss / cfg.meta_batch).backward()
            batch_loss += float(loss.detach()) / cfg.meta_batch
        opt.step()
        if stop.stepped(batch_loss):
            current = Adapter.from_tensors(params)
            acc = val_acc(current)
            stop.checked(current, acc)
            if progress:
                progress(
                    f"episodes {stop.seen:>6}  loss {stop.running:.4f}  meta-val accuracy"
                    f" {acc:.4f}  (best {stop.best_accuracy:.4f} at {stop.best_at})"
                )
    last = Adapter.from_tensors(params)
    return TrainReport(
        stop.best,
        cfg,
        stop.seen,
        stop.best_at,
        identity_acc,
        stop.best_accuracy,
        stop.curve,
        last,
    )
