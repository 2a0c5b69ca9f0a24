"""Command-line options of the ``evaluate`` suite, added to the plugin's "esa" group.

Cheap to import (no lm-eval, no torch): the plugin imports it while pytest parses options. The
values land in ``esa.options.lmeval`` (:class:`LmEvalOptions`: ``tasks``, ``perturb``). The default tasks
are the shipped offline tasks (``harness.metrics.lmeval.OFFLINE_TASKS``), read when the option is added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.option_values import comma_list, option

DEFAULT_PERTURB = "super_weight_zero"
PERTURB_KINDS = ("super_weight_zero", "noise:STD")
_NOISE = re.compile(r"^noise:([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)$")


@dataclass(frozen=True)
class PerturbSpec:
    """A perturbation named on the command line.

    Attributes:
        kind: ``super_weight_zero`` (zero the model's super weight) or ``noise`` (Gaussian noise of
            ``level`` times each weight matrix's own standard deviation, on every linear weight of the decoder
            blocks: the ``std_noise_linear`` recipe).
        level: the noise level; None for ``super_weight_zero``.
    """

    kind: str
    level: float | None = None

    def __str__(self) -> str:
        return self.kind if self.level is None else f"{self.kind}:{self.level:g}"


def parse_perturb(text: str) -> PerturbSpec:
    """Parse ``--perturb``: ``super_weight_zero`` or ``noise:STD`` (e.g. ``noise:0.01``).

    Raises:
        HarnessError: anything else (pytest shows the message as a usage error).
    """
    text = text.strip()
    if text == "super_weight_zero":
        return PerturbSpec("super_weight_zero")
    match = _NOISE.match(text)
    if match and float(match.group(1)) > 0:
        return PerturbSpec("noise", float(match.group(1)))
    raise HarnessError(f"--perturb must be one of {', '.join(PERTURB_KINDS)} (STD > 0), got {text!r}")


def parse_tasks(text: str) -> tuple[str, ...]:
    """Parse ``--tasks``: a comma list of lm-eval task names (checked when the suite runs).

    Raises:
        HarnessError: no task name.
    """
    return comma_list(text, "lm-eval task names")


def default_tasks() -> tuple[str, ...]:
    """The evaluate suite's default tasks: every offline task shipped in ``harness/metrics/tasks/``."""
    from harness.metrics.lmeval import OFFLINE_TASKS

    return tuple(OFFLINE_TASKS)


@dataclass(frozen=True)
class LmEvalOptions:
    """Options of the ``evaluate`` suite (``esa.options.lmeval``)."""

    tasks: tuple[str, ...] = option(
        "--tasks", lambda: "lm-eval tasks of the evaluate suite, comma list; 'offline' = the shipped tasks; hub "
                           "tasks (wikitext, hellaswag, arc_easy, ...) skip without the hub (default: "
                           f"{','.join(default_tasks())})",
        parse=parse_tasks, default_factory=default_tasks, metavar="NAMES")
    perturb: PerturbSpec = option(
        "--perturb", f"perturbation of the evaluate suite: {' or '.join(PERTURB_KINDS)} (default: {DEFAULT_PERTURB})",
        parse=parse_perturb, default=PerturbSpec(DEFAULT_PERTURB), metavar="SPEC")
