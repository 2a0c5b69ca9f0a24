"""Attribution figures: per prompt, a token heatmap of the clean and the perturbed attributions side by side.

Reads the attribution suite's ``target_logprob`` records, whose ``extra`` holds the attribution
(``condition``, ``prompt``, ``method``, ``input_tokens``, ``target_tokens``, ``seq_attr``). One
figure per (model, prompt): a row per condition (clean feature ablation, clean integrated gradients
when recorded, then each perturbation's feature ablation), a column per prompt token. Each row is
scaled by its own largest |attribution| (a perturbation can change the scale by orders of magnitude;
the ranking is what the suite measures); a non-finite attribution (a collapsed model) is grey.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure

from reports.figures import DPI, Figure, slug
from reports.load import RunData

SUITE = "attribution"
CONDITION_ORDER = ("clean", "zero_super_weights", "zero_random", "exp_msb_flip", "wanda_50")
METHOD_LABEL = {"feature_ablation": "FA", "integrated_gradients": "IG", "shapley_sampling": "SV"}


def _rows(records) -> dict[tuple[str, str], list[dict]]:
    """(model, prompt) -> one dict per (condition, method), the latest record of each, in display order."""
    g = records[(records["suite"] == SUITE) & (records["metric"] == "target_logprob")]
    latest: dict[tuple[str, str, str, str], dict] = {}
    for model, x, value in zip(g["model"], g["xtra"], g["value"], strict=True):
        if not x.get("seq_attr") or "prompt" not in x:
            continue
        key = (model, x["prompt"], x.get("condition", "?"), x.get("method", "?"))
        latest[key] = {**x, "logprob": value}
    out: dict[tuple[str, str], list[dict]] = {}
    for (model, prompt, _, _), row in latest.items():
        out.setdefault((model, prompt), []).append(row)

    def order(r: dict) -> tuple:
        c = r.get("condition", "?")
        return (CONDITION_ORDER.index(c) if c in CONDITION_ORDER else len(CONDITION_ORDER), c,
                r.get("method") != "feature_ablation", r.get("method", ""))

    return {k: sorted(v, key=order) for k, v in out.items()}


def _scaled(values: list) -> np.ndarray:
    """Row values over their largest finite |value| (NaN where not finite or missing)."""
    a = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    finite = a[np.isfinite(a)]
    top = np.abs(finite).max() if finite.size else 0.0
    return a / top if top > 0 else np.where(np.isfinite(a), 0.0, np.nan)


def _label(token: str) -> str:
    """A tick label: newlines and tabs escaped, a whitespace-only token shown as ␣ marks."""
    text = token.replace("\n", "\\n").replace("\t", "\\t")
    return text if token.strip() else text.replace(" ", "␣") or "·"


def token_heatmap(model: str, prompt: str, rows: list[dict], outdir: Path) -> Figure:
    """Draw one prompt's heatmap into ``outdir/figures`` (rows over other tokens than the first row are left out)."""
    tokens = rows[0]["input_tokens"]
    rows = [r for r in rows if r["input_tokens"] == tokens and len(r["seq_attr"]) == len(tokens)]
    data = np.vstack([_scaled(r["seq_attr"]) for r in rows])  # (conditions, tokens)
    clean = next((r["logprob"] for r in rows if r.get("condition") == "clean"), None)
    labels = []
    for r in rows:
        text = f"{r.get('condition', '?')} ({METHOD_LABEL.get(r.get('method'), r.get('method', '?'))})"
        lp = r["logprob"]
        if r.get("condition") != "clean" and clean is not None and lp is not None and math.isfinite(lp):
            text += f"  Δlogp {lp - clean:+.2f}"
        elif lp is None or not math.isfinite(lp):
            text += "  collapsed"
        labels.append(text)
    cmap = colormaps["RdBu_r"].with_extremes(bad="#bbbbbb")
    fig = MplFigure(figsize=(max(6.0, 0.55 * len(tokens) + 3.0), 0.5 * len(rows) + 1.8))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tokens)), [_label(t) for t in tokens], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    target = "".join(rows[0].get("target_tokens", []))
    ax.set_title(f"{model} · {prompt} · target {target!r}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="attribution / row max |attribution|")
    name = f"attribution_{slug(model)}_{slug(prompt)}"
    rel = f"figures/{name}.png"
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(outdir / rel, dpi=DPI, bbox_inches="tight")
    caption = ("Per-token attribution of the clean model's greedy continuation (kept fixed), clean and under each "
               "perturbation; each row scaled by its own largest |attribution|; red raises the target's "
               "log-probability, blue lowers it; grey: not finite.")
    return Figure(name=name, section=SUITE, title=f"Attribution heatmap: {model}, {prompt}", caption=caption,
                  path=rel)


def draw(data: RunData, outdir: str | Path) -> list[Figure]:
    """Token heatmaps of every (model, prompt) the run recorded attributions for; paths relative to ``outdir``."""
    outdir = Path(outdir)
    out = []
    for (model, prompt), rows in sorted(_rows(data.records).items()):
        out.append(token_heatmap(model, prompt, rows, outdir))
    return out
