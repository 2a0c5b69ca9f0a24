"""Bounds files (``suites/bounds/<suite>.toml``: ``[model] claim = number``) and the configuration and weights their
numbers were derived under (``suites/bounds/config.toml``)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from harness.claims.declarations import Claim, declared
from harness.data.corpus import DEFAULT_CORPUS
from harness.errors import HarnessError


def _bounds_file(path: Path) -> dict[str, dict[str, float | tuple[float, float]]]:
    """The parsed bounds file (``{}`` when missing), re-read when the file changes."""
    return _cached_toml(path, _parse_bounds)


def _cached_toml(path: Path, parse):
    """``parse(path, text, data)`` of a TOML file (``{}`` when missing), parsed again only when it changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _parse_toml(path, stat.st_mtime_ns, stat.st_size, parse)


@cache
def _parse_toml(path: Path, mtime_ns: int, size: int, parse):
    """Read ``path`` once per version; a syntax error is one line ``<path>:<line>: not valid TOML (...)``."""
    import re

    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = re.search(r"\(at line (\d+), column \d+\)", str(err))
        where, what = (f"{path}:{line[1]}", str(err)[:line.start()].strip()) if line else (str(path), str(err))
        raise HarnessError(f"{where}: not valid TOML ({what}); fix that line") from None
    return parse(path, text, data)


def _parse_bounds(path: Path, text: str, data: dict) -> dict[str, dict[str, float | tuple[float, float]]]:
    """The tables of a bounds file; every error is one line ``<path>:<line>: what is wrong; what to do``."""

    def at(table: str | None, key: str) -> str:  # "path:line" of `key` in [table] (None: above every table)
        current = None
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.split("#", 1)[0].strip()
            if stripped.startswith("["):
                current = stripped.strip("[] ").strip("\"'")
            elif current == table and stripped.split("=", 1)[0].strip().strip("\"'").split(".")[0] == key:
                return f"{path}:{n}"
        return str(path)

    out: dict[str, dict[str, float | tuple[float, float]]] = {}
    for model, table in data.items():
        if not isinstance(table, dict):
            raise HarnessError(f"{at(None, model)}: top-level key {model!r} must be a [model] table of "
                               "claim = number; put it under its model's [name] line")
        nested = [name for name, value in table.items() if isinstance(value, dict)]
        if nested:  # TOML reads a bare key with a dot as a table: `a_0.01_max = 1` is {"a_0": {"01_max": 1}}
            raise HarnessError(f"{at(model, nested[0])}: [{model}] has dotted claim names ({', '.join(nested)}...): "
                               f'quote them, e.g. "noise_0.01_ppl_ratio" = 1.0')
        out[model] = {}
        for name, value in table.items():
            if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
                out[model][name] = (float(value[0]), float(value[1]))
            elif _is_number(value):
                out[model][name] = float(value)
            else:
                raise HarnessError(f"{at(model, name)}: [{model}] {name} = {value!r} must be a number, or "
                                   "[low, high] for a 'within' bound")
    return out


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def bounds_path(bounds_dir: Path, suite: str) -> Path:
    return Path(bounds_dir) / f"{suite}.toml"


def check_bounds_file(bounds_dir: Path, suite: str) -> None:
    """Every name in ``<suite>.toml`` must be a declared bound of the suite.

    Raises:
        HarnessError: one line naming the suite, the offending name and the bounds it declares.
    """
    path = bounds_path(bounds_dir, suite)
    claims = {c.name: c for c in declared(suite).values()}
    bounds = sorted(n for n, c in claims.items() if c.kind == "bound")
    for model, table in _bounds_file(path).items():
        for name in table:
            claim = claims.get(name)
            if claim is None or claim.kind != "bound":
                what = "a relation, which takes no number" if claim is not None else "not declared"
                shown = ", ".join(bounds[:12]) + (f", ... ({len(bounds)} in all)" if len(bounds) > 12 else "")
                raise HarnessError(f"{path}: [{model}] {name} is {what}; suite {suite} declares the bounds "
                                   f"{shown or '(none)'}")
            if (claim.side == "within") != isinstance(table[name], tuple):
                want = "a [low, high] pair" if claim.side == "within" else "one number"
                raise HarnessError(f"{path}: [{model}] {name} is a '{claim.side}' bound and takes {want}")


def bound_for(bounds_dir: Path, claim: Claim, model: str) -> float | tuple[float, float] | None:
    """The number of bound ``claim`` for ``model``, or None (then the claim is unverified)."""
    return _bounds_file(bounds_path(bounds_dir, claim.suite)).get(model, {}).get(claim.name)


# -- the configuration bounds were derived under -------------------------------------------------------

CONFIG_FILE = "config.toml"  # suites/bounds/config.toml: [model] key = value, the options of the bound runs
BOUND_CONFIG = ("preset", "trials", "eval_tokens", "window", "calib_tokens", "dtype", "corpus", "flip_budget")
WEIGHTS_KEY = "weights"  # config.toml: the digest of the weights the bounds were measured on (harness.models.identity)
WEIGHTS_DIFFER = "weights differ from those the bounds were measured on"


def bound_config(info: dict) -> dict[str, str | int]:
    """The options a regression bound depends on, from a run's info (``runs`` row): None reads as the
    preset's (trials, flip budget) or the model's (dtype) default."""
    defaults = {"trials": "preset", "flip_budget": "preset", "dtype": "model default", "corpus": DEFAULT_CORPUS}
    return {k: info.get(k) if info.get(k) is not None else defaults.get(k, "") for k in BOUND_CONFIG}


def config_mismatch(bounds_dir: Path, model: str, config: dict) -> str:
    """Why ``model``'s bounds do not apply to a run under ``config`` (its :func:`bound_config`, and ``weights``: the
    digest of the weights it loaded, ``harness.models.identity``), or ""."""
    path = Path(bounds_dir) / CONFIG_FILE
    recorded = _cached_toml(path, _parse_config).get(model)
    if not recorded:
        return ""
    differ = [f"{k} {recorded[k]} (this run: {config.get(k)})" for k in BOUND_CONFIG
              if k in recorded and str(recorded[k]) != str(config.get(k))]
    if differ:
        return (f"the bounds of {model} were derived under another configuration: {', '.join(differ)} "
                f"({path}); run with those options, or measure this configuration at five seeds (`make bounds`)")
    weights, loaded = recorded.get(WEIGHTS_KEY), config.get(WEIGHTS_KEY)
    if weights and loaded and weights != loaded:
        return (f"{WEIGHTS_DIFFER} of {model} (bounds: {weights}, this run: {loaded}; {path}): a new conversion, "
                "library release or fine-tune; check the model (`python -m harness models`), then derive its bounds "
                "again (`make bounds`)")
    return ""


def _parse_config(path: Path, text: str, data: dict) -> dict[str, dict]:
    for model, table in data.items():
        unknown = sorted(set(table) - {*BOUND_CONFIG, WEIGHTS_KEY}) if isinstance(table, dict) else [model]
        if unknown:
            raise HarnessError(f"{path}: [{model}] has {unknown[0]!r}; a model's table takes "
                               f"{', '.join((*BOUND_CONFIG, WEIGHTS_KEY))}")
    return data
