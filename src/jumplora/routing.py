"""Which learned task an input belongs to, from its features alone: per-task statistics, no examples.

The reference of the continual-learning literature (EPI, Wang et al. 2023b) routes by the
Mahalanobis distance of an input's feature x to each task's mean μ_t under one covariance Σ shared
by all tasks (the pooled within-task covariance, shrunk):

    d_t(x)² = (x − μ_t)ᵀ Σ⁻¹ (x − μ_t),     route(x) = argmin_t d_t(x)²,
    p(t | x) = softmax_t(−d_t(x)² / 2)      (equal priors; the router's confidence)

Σ is the Ledoit–Wolf estimate: Σ = (1 − s)·S + s·m·I with S = (1/N) Σ_t Σ_{i∈t} (x_i − μ_t)(x_i − μ_t)ᵀ,
m = tr(S)/d and the shrinkage s of Ledoit & Wolf (2004). scikit-learn's ``ledoit_wolf`` needs the
data; a router must not keep it, so each task keeps only its sufficient statistics, taken while
its features are in memory (the end of the task): n_t, μ_t, its scatter Σ_i (x_i − μ_t)(x_i − μ_t)ᵀ
and Σ_i ‖x_i − μ_t‖⁴, from which S and s follow exactly (tests check them against
``sklearn.covariance.ledoit_wolf`` on the pooled centred features).

An input farther from every task than that task's own held-out inputs were is "no learned task":
each task's threshold is the 99th percentile of d_t² over its dev inputs and over its training
inputs, each measured by a router fitted without its fold (5 folds: a router fitted on a point
understates its distance), kept as a ratio to the d² a new input of the task is expected to have,
tr(Σ⁻¹·C_t)·(1 + 1/n_t) — so that when a later task changes Σ the threshold follows it; beyond
it for every task, :meth:`Router.route` says -1.

Features: the mean-pooled, L2-normalised last hidden state of a small sentence encoder that no task
changes (``FeatureEncoder``: all-minilm-l6-v2, bundled), of the whole prompt or of the text alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from jumplora.errors import JumploraError

OUTSIDE_QUANTILE = 99.0  # percent of a task's held-out inputs inside its distance threshold
PREFIX = "router/"


@dataclass
class TaskStatistics:
    """What a task leaves in the router: sufficient statistics of its features, and its threshold."""

    name: str
    count: int
    mean: np.ndarray  # (d,)
    scatter: np.ndarray  # (d, d): Σ (x − μ)(x − μ)ᵀ
    fourth: float  # Σ ‖x − μ‖⁴
    threshold: float = math.inf  # d² beyond which an input is not this task's, under Σ when it was added
    ratio: float | None = None  # that threshold over the d² a new input of the task is expected to have then

    def expected(self, inverse: np.ndarray) -> float:
        """E[d²] of a new input of the task under Σ⁻¹ = ``inverse``: tr(Σ⁻¹·C)·(1 + 1/n), C its
        covariance (the mean is estimated from n inputs)."""
        return float(np.sum(inverse * self.scatter) / self.count * (1 + 1 / self.count))


@dataclass
class Router:
    tasks: list[TaskStatistics] = field(default_factory=list)
    _inverse: np.ndarray | None = None

    # -- fitting -----------------------------------------------------------------------------------

    def add(self, name: str, features: np.ndarray, held_out: np.ndarray | None = None) -> TaskStatistics:
        """Add task ``name`` from its features (n × d, float64 in memory only while added); its
        threshold is calibrated on ``held_out`` features (else on ``features``)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise JumploraError(f"task {name} needs at least 2 training inputs for the router, got {len(x)}")
        stats = _statistics(name, x)
        self.tasks = [t for t in self.tasks if t.name != name] + [stats]
        self._inverse = None
        distances = list(self._held_out_distances(x))
        if held_out is not None and len(held_out):
            distances += list(self.distances(np.asarray(held_out, dtype=np.float64))[:, -1])
        stats.threshold = float(np.percentile(distances, OUTSIDE_QUANTILE))
        stats.ratio = stats.threshold / stats.expected(self.inverse())
        return stats

    def _held_out_distances(self, x: np.ndarray, folds: int = 5) -> np.ndarray:
        """d² of each training input of the task just added, from a router fitted without its fold
        (the task's mean and the shared Σ both): what a new input of the task would measure, which
        a router fitted on the input itself understates."""
        order = np.random.default_rng(0).permutation(len(x))
        out = np.empty(len(x))
        others = self.tasks[:-1]
        for part in np.array_split(order, min(folds, len(x))):
            rest = x[np.setdiff1d(order, part)]
            if len(rest) < 2:
                rest = x
            without = Router([*others, _statistics(self.tasks[-1].name, rest)])
            out[part] = without.distances(x[part])[:, -1]
        return out

    def remove(self, name: str) -> None:
        """Forget a task (a rollback): the shared covariance is rebuilt from the others' statistics."""
        self.tasks = [t for t in self.tasks if t.name != name]
        self._inverse = None

    def covariance(self) -> np.ndarray:
        """The shared Ledoit–Wolf covariance Σ (module docstring)."""
        total = sum(t.count for t in self.tasks)
        S = sum(t.scatter for t in self.tasks) / total
        return (1 - self.shrinkage(S, total)) * S + self.shrinkage(S, total) * np.trace(S) / len(S) * np.eye(len(S))

    def shrinkage(self, S: np.ndarray, total: int) -> float:
        """Ledoit & Wolf's shrinkage intensity of the pooled centred features, from the statistics:
        with m = tr(S)/d, δ = ‖S − m·I‖²_F / d and β = (Σ_i ‖x_i‖⁴ / N − ‖S‖²_F) / (d·N), s = min(β, δ)/δ."""
        d = len(S)
        m = np.trace(S) / d
        delta = (np.sum(S ** 2) - 2 * m * np.trace(S) + d * m ** 2) / d
        beta = (sum(t.fourth for t in self.tasks) / total - np.sum(S ** 2)) / (d * total)
        return 0.0 if delta == 0 else float(min(beta, delta) / delta)

    # -- routing -------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def distances(self, features: np.ndarray) -> np.ndarray:
        """d_t(x)² of each input (rows) to each task (columns, in the order added)."""
        if not self.tasks:
            raise JumploraError("the router has no task yet")
        x = np.asarray(features, dtype=np.float64)
        means = np.stack([t.mean for t in self.tasks])
        diff = x[:, None, :] - means[None, :, :]
        return np.einsum("ntd,de,nte->nt", diff, self.inverse(), diff)

    def route(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the index of the chosen task per input, -1 for no learned task; its confidence p(t | x))."""
        d2 = self.distances(features)
        chosen = d2.argmin(1)
        logits = -d2 / 2
        probability = np.exp(logits - logits.max(1, keepdims=True))
        probability /= probability.sum(1, keepdims=True)
        outside = (d2 > self.thresholds()[None, :]).all(1)
        return np.where(outside, -1, chosen), probability[np.arange(len(chosen)), chosen]

    def thresholds(self) -> np.ndarray:
        """Each task's distance threshold under the current Σ: its calibrated ratio to the d² a new
        input of the task is expected to have. A later task changes the shared Σ, and with it
        every task's distances; the thresholds follow, so "no learned task" keeps its meaning."""
        self._ratios()
        return np.array([t.ratio * t.expected(self.inverse()) for t in self.tasks])

    def inverse(self) -> np.ndarray:
        """Σ⁻¹, computed once per change of the tasks."""
        if self._inverse is None:
            self._inverse = np.linalg.inv(self.covariance())
        return self._inverse

    def _ratios(self) -> None:
        """A router saved before the thresholds followed Σ keeps each task's threshold under the Σ of
        its time: the ratio is recovered from the tasks before it, in order."""
        for index, task in enumerate(self.tasks):
            if task.ratio is None:
                earlier = Router(self.tasks[: index + 1])
                task.ratio = task.threshold / task.expected(np.linalg.inv(earlier.covariance()))

    # -- saving --------------------------------------------------------------------------------------

    def state(self, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix`` (a checkpoint's, a model folder's), with the task order."""
        out = {}
        for i, t in enumerate(self.tasks):
            key = f"{prefix}{i:03d}/"
            out.update({key + "count": torch.tensor(t.count), key + "mean": torch.from_numpy(t.mean),
                        key + "scatter": torch.from_numpy(t.scatter), key + "fourth": torch.tensor(t.fourth, dtype=torch.float64),
                        key + "threshold": torch.tensor(t.threshold, dtype=torch.float64),
                        key + "ratio": torch.tensor(t.ratio if t.ratio is not None else math.nan, dtype=torch.float64),
                        key + "name": torch.tensor(list(t.name.encode()), dtype=torch.uint8)})
        return out

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str = PREFIX) -> Router:
        indices = sorted({k[len(prefix):].split("/")[0] for k in tensors if k.startswith(prefix)})
        tasks = []
        for index in indices:
            key = f"{prefix}{index}/"
            tasks.append(TaskStatistics(
                bytes(tensors[key + "name"].tolist()).decode(), int(tensors[key + "count"]),
                tensors[key + "mean"].double().numpy(), tensors[key + "scatter"].double().numpy(),
                float(tensors[key + "fourth"]), float(tensors[key + "threshold"]),
                _number(tensors.get(key + "ratio"))))
        return cls(tasks)


def _number(tensor) -> float | None:
    return None if tensor is None or math.isnan(float(tensor)) else float(tensor)


def _statistics(name: str, x: np.ndarray) -> TaskStatistics:
    mean = x.mean(0)
    centred = x - mean
    return TaskStatistics(name, len(x), mean, centred.T @ centred, float(((centred ** 2).sum(1) ** 2).sum()))


class FeatureEncoder:
    """Features of texts for the router: the mean over the real tokens of the last hidden state of
    a model's body, L2-normalised (all-MiniLM-L6-v2's own pooling), in float64 on the CPU. The
    router's is the bundled sentence encoder; ``family="causal"`` takes a decoder's own body (what
    benchmarks/router_features.py compares it with)."""

    def __init__(self, model: str = "all-minilm-l6-v2", max_length: int = 256, batch_size: int = 64,
                 family: str = "encoder") -> None:
        from jumplora.families import load_model

        self.name, self.max_length, self.batch_size = model, max_length, batch_size
        self.model, self.tokenizer, _ = load_model(model, family=family)
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model.base_model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size))
