"""Report views of the finetune suite (suites/test_finetune.py): loss curves and the before/after table.

Read only from store records (suite ``finetune``): ``train_loss`` per step (method = variant, extra
step/tokens), ``perplexity``, ``ppl_ratio`` (perturbation kind ``zero`` or ``noise`` with ``level``),
``collapse_rate``, ``jaccard``, ``top_super_weight_kept``, ``super_weight_drift`` and ``seconds``
(method ``base`` or the variant). :func:`draw` is called by ``reports.figures.suite_module_figures``;
:func:`before_after_table` gives one table per model (rows: measures, columns: base and variants).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure as MplFigure

from reports.figures import Figure, _save, slug
from reports.load import RunData, pget, xget

SUITE = "finetune"
BASE = "base"
VARIANT_ORDER = ("plain", "noise", "clip")


def _measured(records: pd.DataFrame) -> pd.DataFrame:
    recs = records[records["suite"] == SUITE]
    return recs[~recs["is_claim"]] if "is_claim" in recs else recs


def _columns(methods) -> list[str]:
    known = [m for m in (BASE, *VARIANT_ORDER) if m in set(methods)]
    return known + sorted(set(methods) - set(known) - {"plain-noise"})


def loss_curves(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``model -> frame`` of (method, step, tokens, loss) of the training steps."""
    recs = _measured(records)
    recs = recs[recs["metric"] == "train_loss"]
    out = {}
    for model, g in recs.groupby("model"):
        out[model] = pd.DataFrame({"method": g["method"], "step": pd.to_numeric(xget(g, "step")),
                                   "tokens": pd.to_numeric(xget(g, "tokens")), "loss": g["value"]}
                                  ).sort_values(["method", "step"])
    return out


def _last(g: pd.DataFrame, method: str) -> float | None:
    """The last recorded value of ``method`` in ``g`` (None when it has none)."""
    v = g.loc[g["method"] == method, "value"]
    return float(v.iloc[-1]) if len(v) else None


def before_after_table(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``model -> table``: one row per measure, one column per model version (base, plain, noise, ...).

    A blank cell was not measured (the base model has no training loss nor super-weight shift).
    """
    return {model: _table(g) for model, g in _measured(records).groupby("model")}


def _table(g: pd.DataFrame) -> pd.DataFrame:
    methods = _columns(g["method"].dropna().unique())
    kind, level = pget(g, "kind"), pd.to_numeric(pget(g, "level"), errors="coerce")
    rows: dict[str, dict[str, float | None]] = {}

    def row(name: str, sel: pd.DataFrame, how=_last) -> None:
        rows[name] = {m: how(sel, m) for m in methods}

    row("held-out perplexity", g[g["metric"] == "perplexity"])
    row("ppl ratio, super weights zeroed", g[(g["metric"] == "ppl_ratio") & (kind == "zero")])
    row("uniform exp-MSB collapse rate", g[g["metric"] == "collapse_rate"])
    noise = (g["metric"] == "ppl_ratio") & (kind == "noise")
    for sigma in sorted(level[noise].dropna().unique()):
        row(f"ppl ratio, relative noise σ={sigma:g}", g[noise & (level == sigma)])
    row("super weights: Jaccard vs base", g[g["metric"] == "jaccard"])
    row("top super weight kept (1 = yes)", g[g["metric"] == "top_super_weight_kept"])
    row("max |relative drift| of a super weight", g[g["metric"] == "super_weight_drift"],
        lambda s, m: float(s.loc[s["method"] == m, "value"].abs().max()) if (s["method"] == m).any() else None)
    loss = g[g["metric"] == "train_loss"]
    loss = loss.assign(step=pd.to_numeric(xget(loss, "step"), errors="coerce"))
    row("train loss, first step", loss, lambda s, m: _at_step(s, m, 0))
    row("train loss, last step", loss, lambda s, m: _at_step(s, m, -1))
    row("training seconds", g[g["metric"] == "seconds"])
    table = pd.DataFrame(rows).T[methods]
    table.index.name = "measure"
    return table


def _at_step(loss: pd.DataFrame, method: str, end: int) -> float | None:
    """The loss of ``method``'s first (``end`` 0) or last (``end`` -1) step."""
    mine = loss[loss["method"] == method].sort_values("step")
    return float(mine["value"].iloc[end]) if len(mine) else None


def draw(data: RunData, outdir: Path) -> list[Figure]:
    """The loss-curve figure of each model (one line per variant)."""
    out = []
    for model, curves in loss_curves(data.records).items():
        fig = MplFigure(figsize=(6.0, 3.4))
        ax = fig.subplots()
        for method in _columns(curves["method"].unique()):
            c = curves[curves["method"] == method]
            ax.plot(c["tokens"], c["loss"], marker="o", markersize=3, label=method)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training loss (per step)")
        title = f"Fine-tuning loss, {model}"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        name = f"finetune_loss__{slug(model)}"
        out.append(Figure(name, SUITE, title, "Causal-LM loss of each training step on calibration documents; "
                          "every variant has the same budget, learning rate, schedule and seed.",
                          _save(fig, outdir, name)))
    return out


def _headline(measure: str, method: str):
    def value(recs: pd.DataFrame):
        tables = before_after_table(recs)
        for table in tables.values():
            if measure in table.index and method in table.columns:
                v = table.loc[measure, method]
                return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        return None
    return value


HEADLINES = [
    ("fine-tuned perplexity (plain)", _headline("held-out perplexity", "plain"),
     "finetune suite: held-out perplexity after plain full fine-tuning"),
    ("fine-tuned: top super weight kept", _headline("top super weight kept (1 = yes)", "plain"),
     "1 = same (layer, row, col) after plain fine-tuning"),
]
