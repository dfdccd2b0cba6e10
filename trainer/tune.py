"""``movierec train --tune [BUDGET]``: search the settings on a holdout carved from the training
data itself (EVALUATION.md's protocol, never a test file), within a time budget, then train on
all of it with the best.

    movierec train --data DIR --out ART --tune        # 10 minutes
    movierec train --data DIR --out ART --tune 90s    # or 600, 10m, 1.5h

Every trial is the default's own procedure (early stopping on the same holdout picks its epochs
and popularity weight), so trial 0 *is* the default and the winner scores at least as well on
the holdout. From the best so far, each lever in turn tries a step down and a step up and keeps
a step that raises holdout NDCG@10 by more than MIN_GAIN (one holdout's noise is ~0.005);
passes repeat while time remains. A trial that would not end within the budget (estimated from
the ones before) is not started. Settings set to anything but their default are not searched.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from movierec.errors import UsageError
from trainer.config import TrainConfig
from trainer.defaults import Shape, resolve
from trainer.evaluate import Scores
from trainer.holdout import HOLDOUT_SEED, Stopped, carve, stop_early
from trainer.movielens import MovieLens

MIN_GAIN = 0.01  # relative NDCG@10 gain a step must show to be kept
# Steps per lever, tried from the best settings so far; the order is the levers' measured
# effect on validation (benchmarks/shapes.py): training length and capacity first.
STEPS: dict[str, tuple[Any, ...]] = {
    "lr": (0.5, 2.0),  # multiplied
    "dim": (0.5, 2.0),  # multiplied
    "weight_decay": (0.0, 0.3),  # set
    "keep": (0.4, 0.8),  # set
    "like_threshold": (-0.5, 0.5),  # added
    "min_count": (1, 5),  # set
    "rating_weight": (0.0, 1.0),  # set
}
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """Seconds from '600', '600s', '10m' or '1.5h'."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise UsageError(f"--tune takes a time budget like 600, 90s, 10m or 1h, not {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Trial:
    changes: dict[str, Any]  # settings that differ from the default's
    config: TrainConfig  # as trained (epochs and popularity still auto)
    stopped: Stopped

    @property
    def ndcg(self) -> float:
        return self.stopped.ndcg

    @property
    def scores(self) -> Scores:
        return self.stopped.scores

    def row(self) -> dict[str, Any]:
        s = self.scores
        return {"changes": self.changes, "epochs": self.stopped.epochs,
                "popularity": self.stopped.popularity, "ease": self.stopped.ease,
                "ndcg@10": round(self.ndcg, 4),
                "recall@20": round(s.recall_20, 4), "coverage@10": round(s.coverage_10, 4),
                "seconds": round(self.stopped.seconds, 1)}  # fmt: skip


def search(
    data: MovieLens, config: TrainConfig, budget: float, show_progress: bool = True
) -> tuple[TrainConfig, dict[str, Any]]:
    """The settings to train on all of ``data`` with (every field explicit) and the record of
    the search for the manifest."""
    if config.objective != "cbow":
        raise UsageError(f"--tune searches cbow's settings, not {config.objective}'s")
    start = time.perf_counter()
    fit, _ = carve(data, HOLDOUT_SEED + config.seed)  # the holdout stop_early scores on
    base, _ = resolve(config, Shape.of_ratings(fit.ratings, config.like_threshold))
    searched = [k for k in STEPS if k in config.unresolved or _is_default(config, k)]
    trials: list[Trial] = []
    with tqdm(total=round(budget), unit="s", disable=not show_progress, desc="tune") as bar:

        def run(changes: dict[str, Any]) -> Trial:
            trial = Trial(changes, dataclasses.replace(base, **changes),
                          stop_early(data, dataclasses.replace(base, **changes)))  # fmt: skip
            trials.append(trial)
            bar.update(min(round(time.perf_counter() - start), bar.total) - bar.n)
            bar.set_postfix(trials=len(trials), best=f"{max(t.ndcg for t in trials):.4f}")
            return trial

        best = run({})
        final = best.stopped.seconds  # training on everything costs about one trial
        improved = True
        while improved:
            improved = False
            for name in searched:
                for value in _candidates(name, best.config):
                    changes = {**best.changes, name: value}
                    changes = {k: v for k, v in changes.items() if getattr(base, k) != v}
                    if dataclasses.replace(base, **changes) in (t.config for t in trials):
                        continue  # tried already (a step back to the default's value, say)
                    cost = best.stopped.seconds * _cost(changes, base)
                    if time.perf_counter() - start + cost + final > budget:
                        continue
                    trial = run(changes)
                    if trial.ndcg > best.ndcg * (1 + MIN_GAIN):
                        best, improved = trial, True
    s = best.stopped
    winner = dataclasses.replace(best.config, epochs=s.epochs, popularity=s.popularity,
                                 ease=s.ease, ease_lambda=s.ease_lambda,
                                 ease_debias=s.ease_debias)  # fmt: skip
    record = {"budget_s": budget, "seconds": round(time.perf_counter() - start, 1),
              "trials": [t.row() for t in trials], "winner": trials.index(best)}  # fmt: skip
    return winner, {"tune": record}


def _is_default(config: TrainConfig, name: str) -> bool:
    """Left at its default (not an auto field): the search may move it."""
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return bool(getattr(config, name) == field.default)


def _candidates(name: str, config: TrainConfig) -> list[Any]:
    current = getattr(config, name)
    steps = STEPS[name]
    if name in ("lr", "dim"):
        values = [type(current)(current * s) for s in steps]
    elif name == "like_threshold":
        values = [current + s for s in steps]
    else:
        values = list(steps)
    return [v for v in values if v != current and _valid(config, name, v)]


def _valid(config: TrainConfig, name: str, value: Any) -> bool:
    try:
        dataclasses.replace(config, **{name: value})
    except ValueError:
        return False
    return not (name == "dim" and not 8 <= value <= 1024)


def _cost(changes: dict[str, Any], base: TrainConfig) -> float:
    """A trial's time relative to the default's: training scales with the dimension."""
    return float(changes.get("dim", base.dim) / base.dim)


def table(record: dict[str, Any]) -> str:
    """The trials of a search (the manifest's training.tune), the kept one starred."""
    settings = [", ".join(f"{k}={v:g}" for k, v in t["changes"].items()) or "default"
                for t in record["trials"]]  # fmt: skip
    width = max(len("settings (vs the default)"), *map(len, settings))
    lines = [f"{'':2}{'#':>3}  {'settings (vs the default)':{width}} {'epochs':>6} {'pop':>4} "
             f"{'ease':>4} {'ndcg@10':>8} {'recall@20':>9} {'cov@10':>7} {'s':>6}"]  # fmt: skip
    for i, (t, changed) in enumerate(zip(record["trials"], settings, strict=True)):
        star = "*" if i == record["winner"] else ""
        lines.append(f"{star:2}{i:>3}  {changed:{width}} {t['epochs']:>6} {t['popularity']:>4g} "
                     f"{t.get('ease', 0):>4g} {t['ndcg@10']:8.4f} {t['recall@20']:9.4f} "
                     f"{t['coverage@10']:7.4f} {t['seconds']:6.1f}")  # fmt: skip
    lines.append("(on a holdout: a random 20% of each user's ratings, trained on the rest; "
                 "* was kept and trained on all the data)")  # fmt: skip
    return "\n".join(lines)
