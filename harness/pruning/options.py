"""pytest options of the pruning and selective suites (added to the plugin's "esa" group).

They reach tests as ``esa.options.extra["<name>"]`` (``prune_layers``, ``percentile``, ...). A value
left at None means "the preset's" (see each help text).
"""

from __future__ import annotations

from harness.option_values import as_option_type, choice, comma_list

# Quick preset (CI on two CPU cores) and full preset (GPU runners) of the pruning suite grid. The quick
# sparsities draw the curve with four points (~3.5 s per cell on smollm2-135m, two CPU cores).
QUICK_SPARSITIES = (0.1, 0.3, 0.5, 0.6)
FULL_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
QUICK_GRANULARITIES = ("row", "2:4")
FULL_GRANULARITIES = ("matrix", "row", "global", "2:4", "4:8", "head", "neuron")
SUITE_SCORERS = ("magnitude", "wanda", "gradient", "magnitude+protect")  # +protect: super weights kept
FULL_SCORERS = (*SUITE_SCORERS, "taylor", "wanda+protect")


def sparsities(text: str) -> tuple[float, ...]:
    """A comma list of sparsities, each in [0, 1)."""
    from harness.pruning.masks import check_fraction

    return tuple(dict.fromkeys(check_fraction(t) for t in comma_list(text, "sparsities")))


def granularities(text: str) -> tuple[str, ...]:
    """A comma list of granularities (``harness.pruning.masks.GRANULARITIES``), by their canonical names."""
    from harness.pruning.masks import parse_granularity

    return tuple(dict.fromkeys(parse_granularity(t).name for t in comma_list(text, "granularities")))


def scorers(text: str) -> tuple[str, ...]:
    """A comma list of scorer names (``SCORERS``), each optionally ``NAME+protect``."""
    from harness.scoring import SCORERS

    names = comma_list(text, "scorer names")
    for name in names:
        choice(name.removesuffix("+protect"), SCORERS, "scorer")
    return names


def percentile(text: str) -> float:
    """A percentile in [0, 100]."""
    from harness.pruning.selective import check_percentile

    return check_percentile(text)


def threshold(text: str) -> float:
    """A share of the matrix's largest score, in [0, 1]."""
    from harness.pruning.masks import check_fraction

    return check_fraction(text, "threshold", allow_one=True)


def prune_method(text: str) -> str:
    """A name of ``PRUNE_METHODS``."""
    from harness.pruning.methods import PRUNE_METHODS

    return choice(text, PRUNE_METHODS, PRUNE_METHODS.kind)


def add_options(group) -> None:
    """Add the pruning options to the plugin's option group (choices in the help come from the registries
    and tables they are checked against: ``PRUNE_METHODS``, ``GRANULARITIES``, the archmap's components)."""
    from harness.models.archmap import GROUPS
    from harness.pruning.masks import GRANULARITIES
    from harness.pruning.methods import PRUNE_METHODS

    granularity_help = ", ".join(g if g != "N:M" else "N:M (2:4, 4:8)" for g in GRANULARITIES)
    weights = GROUPS["linear"]  # the weight matrices; norms are not pruned
    components_help = " ".join([*weights, *(g for g, members in GROUPS.items() if set(members) <= set(weights))])
    group.addoption("--prune-scorers", dest="esa_prune_scorers", type=as_option_type(scorers), default=None,
                    help="scorers of the pruning and selective suites, comma list; 'NAME+protect' keeps the "
                         f"super weights (default: quick {','.join(SUITE_SCORERS)}; full adds taylor, wanda+protect; "
                         "selective: magnitude,wanda)")
    group.addoption("--sparsities", dest="esa_sparsities", type=as_option_type(sparsities), default=None,
                    help="sparsities in [0, 1) of the pruning suite, comma list (default: quick "
                         f"{','.join(map(str, QUICK_SPARSITIES))}; full {','.join(map(str, FULL_SPARSITIES))})")
    group.addoption("--granularity", dest="esa_granularity", type=as_option_type(granularities), default=None,
                    help=f"pruning granularities, comma list of {granularity_help} "
                         f"(default: quick {','.join(QUICK_GRANULARITIES)}; "
                         f"full {','.join(FULL_GRANULARITIES)})")
    group.addoption("--prune-layers", dest="esa_prune_layers", default=None,
                    help="selective pruning: layers as 'all', '3,4', '0-5' or block paths like model.layers.3 "
                         "(default: the suite's built-in selections; 'all' when another selective option is given)")
    group.addoption("--prune-component", dest="esa_prune_component", default=None,
                    help=f"selective pruning: component(s) or group: {components_help} "
                         "(default: built-in selections; 'linear' otherwise)")
    group.addoption("--percentile", dest="esa_percentile", type=as_option_type(percentile), default=None,
                    help="selective pruning: prune scores below this percentile of each matrix, in [0, 100] "
                         "(default: built-in selections; 50 otherwise)")
    group.addoption("--threshold", dest="esa_threshold", type=as_option_type(threshold), default=None,
                    help="selective pruning: prune scores below this share of the matrix's largest score, "
                         "in [0, 1] (default: none)")
    group.addoption("--prune-method", dest="esa_prune_method", type=as_option_type(prune_method), default=None,
                    help=f"what pruned weights become: {', '.join(PRUNE_METHODS.names())} (default: zero)")
    group.addoption("--save-pruned", dest="esa_save_pruned", default=None, metavar="DIR",
                    help="selective suite: also save each pruned model to DIR/<model>/<cell> as safetensors "
                         "(default: not saved)")
    group.addoption("--overwrite-pruned", dest="esa_overwrite_pruned", action="store_true", default=False,
                    help="with --save-pruned: replace existing model directories (default: refuse)")
