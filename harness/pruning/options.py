"""pytest options of the pruning and selective suites (added to the plugin's "esa" group).

They reach tests as ``esa.options.pruning`` (:class:`PruningOptions`: ``layers``, ``percentile``, ...). A value
left at None means "the preset's" (see each help text).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.option_values import choice, comma_list, option

# Quick preset (CI on two CPU cores) and full preset (GPU runners) of the pruning suite grid. The quick
# sparsities draw the curve with four points (~3.5 s per cell on smollm2-135m, two CPU cores).
QUICK_SPARSITIES = (0.1, 0.3, 0.5, 0.6)
FULL_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
QUICK_GRANULARITIES = ("row", "2:4")
FULL_GRANULARITIES = ("matrix", "row", "global", "2:4", "4:8", "head", "neuron")
SUITE_SCORERS = ("magnitude", "wanda", "gradient", "magnitude+protect")  # +protect: super weights kept
FULL_SCORERS = (*SUITE_SCORERS, "taylor", "wanda+protect")


def parse_sparsities(text: str) -> tuple[float, ...]:
    """A comma list of sparsities, each in [0, 1)."""
    from harness.pruning.masks import check_fraction

    return tuple(dict.fromkeys(check_fraction(t) for t in comma_list(text, "sparsities")))


def parse_granularities(text: str) -> tuple[str, ...]:
    """A comma list of granularities (``harness.pruning.masks.GRANULARITIES``), by their canonical names."""
    from harness.pruning.masks import parse_granularity

    return tuple(dict.fromkeys(parse_granularity(t).name for t in comma_list(text, "granularities")))


def parse_scorers(text: str) -> tuple[str, ...]:
    """A comma list of scorer names (``SCORERS``), each optionally ``NAME+protect``."""
    from harness.scoring import SCORERS

    names = comma_list(text, "scorer names")
    for name in names:
        choice(name.removesuffix("+protect"), SCORERS, "scorer")
    return names


def parse_percentile(text: str) -> float:
    """A percentile in [0, 100]."""
    from harness.pruning.selective import check_percentile

    return check_percentile(text)


def parse_threshold(text: str) -> float:
    """A share of the matrix's largest score, in [0, 1]."""
    from harness.pruning.masks import check_fraction

    return check_fraction(text, "threshold", allow_one=True)


def parse_prune_method(text: str) -> str:
    """A name of ``PRUNE_METHODS``."""
    from harness.pruning.methods import PRUNE_METHODS

    return choice(text, PRUNE_METHODS, PRUNE_METHODS.kind)


def _granularity_help() -> str:
    from harness.pruning.masks import GRANULARITIES

    names = ", ".join(g if g != "N:M" else "N:M (2:4, 4:8)" for g in GRANULARITIES)
    return (f"pruning granularities, comma list of {names} (default: quick {','.join(QUICK_GRANULARITIES)}; "
            f"full {','.join(FULL_GRANULARITIES)})")


def _component_help() -> str:
    from harness.models.archmap import GROUPS

    weights = GROUPS["linear"]  # the weight matrices; norms are not pruned
    names = " ".join([*weights, *(g for g, members in GROUPS.items() if set(members) <= set(weights))])
    return f"selective pruning: component(s) or group: {names} (default: built-in selections; 'linear' otherwise)"


def _method_help() -> str:
    from harness.pruning.methods import PRUNE_METHODS

    return f"what pruned weights become: {', '.join(PRUNE_METHODS.names())} (default: zero)"


@dataclass(frozen=True)
class PruningOptions:
    """Options of the pruning and selective suites (``esa.options.pruning``); None: the preset's or the
    suite's built-in selections. Choices in the help come from the registries and tables they are checked
    against (``PRUNE_METHODS``, ``GRANULARITIES``, the archmap's components)."""

    scorers: tuple[str, ...] | None = option(
        "--prune-scorers", "scorers of the pruning and selective suites, comma list; 'NAME+protect' keeps the "
                           f"super weights (default: quick {','.join(SUITE_SCORERS)}; full adds taylor, "
                           "wanda+protect; selective: magnitude,wanda)", parse=parse_scorers)
    sparsities: tuple[float, ...] | None = option(
        "--sparsities", "sparsities in [0, 1) of the pruning suite, comma list (default: quick "
                        f"{','.join(map(str, QUICK_SPARSITIES))}; full {','.join(map(str, FULL_SPARSITIES))})",
        parse=parse_sparsities)
    granularities: tuple[str, ...] | None = option("--granularity", _granularity_help, parse=parse_granularities)
    layers: str | None = option(
        "--prune-layers", "selective pruning: layers as 'all', '3,4', '0-5' or block paths like model.layers.3 "
                          "(default: the suite's built-in selections; 'all' when another selective option is given)")
    component: str | None = option("--prune-component", _component_help)
    percentile: float | None = option(
        "--percentile", "selective pruning: prune scores below this percentile of each matrix, in [0, 100] "
                        "(default: built-in selections; 50 otherwise)", parse=parse_percentile)
    threshold: float | None = option(
        "--threshold", "selective pruning: prune scores below this share of the matrix's largest score, "
                       "in [0, 1] (default: none)", parse=parse_threshold)
    method: str | None = option("--prune-method", _method_help, parse=parse_prune_method)
    save_dir: str | None = option(
        "--save-pruned", "selective suite: also save each pruned model to DIR/<model>/<cell> as safetensors "
                         "(default: not saved)", metavar="DIR")
    overwrite: bool = option("--overwrite-pruned",
                             "with --save-pruned: replace existing model directories (default: refuse)",
                             default=False)
