"""The registries are the single source of truth: a toy scorer registered with one decorator is a valid
option value, part of the compare suite's default grid and timed in ``Cost.seconds``; a toy suite file
is listed by ``python -m harness analyses``; every hand-chosen subset names registered entries."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.__main__ import find_analyses, main
from harness.errors import HarnessError, UnknownNameError
from harness.registry import Registry
from harness.scoring import SCORERS, score
from harness.scoring.base import Cost, ScoreSet, scorer

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
TOY = "toy_scorer"
TOY_DELAY = 0.05  # seconds the toy scorer's lazy compute sleeps per matrix


@pytest.fixture
def toy():
    """A scorer registered with the one decorator, removed afterwards: |w| computed lazily, slowly."""

    @scorer(TOY)
    def toy_scorer(ctx):
        """|w|, computed at access after a fixed delay per matrix."""

        def compute(ref):
            time.sleep(TOY_DELAY)
            return ctx.model.get_parameter(ref.param).detach().float().abs()

        return ScoreSet(TOY, ctx.refs, Cost(), ctx.model, compute)

    try:
        yield TOY
    finally:
        SCORERS.unregister(TOY)
    assert TOY not in SCORERS


def test_registry_tags_and_temporary_entries():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1, tags=("default",))
    reg.register("b", tags="default")(2)
    reg.register("c", 3)
    assert reg.names() == ["a", "b", "c"]
    assert reg.names(tag="default") == ["a", "b"]
    assert reg.tags("c") == frozenset()
    with reg.registered("d", 4, tags=("default",)):
        assert reg.names(tag="default") == ["a", "b", "d"]
    assert "d" not in reg
    with pytest.raises(RuntimeError), reg.registered("e", 5):
        raise RuntimeError("the entry goes even when the block raises")
    assert "e" not in reg
    assert reg.unregister("c") == 3 and reg.names() == ["a", "b"]
    with pytest.raises(UnknownNameError, match="Known: a, b"):
        reg.unregister("c")
    with pytest.raises(HarnessError, match="already registered"):
        reg.register("a", 9)
    with pytest.raises(HarnessError, match="non-empty strings"):
        reg.register("f", 6, tags=("",))


def test_toy_scorer_is_an_option_choice(toy):
    from harness.pruning.options import parse_scorers as scorers
    from harness.scoring.options import parse_methods as methods

    assert methods(f"magnitude,{toy}") == ("magnitude", toy)
    assert scorers(f"{toy}+protect") == (f"{toy}+protect",)
    with pytest.raises(UnknownNameError, match=f"Did you mean {toy!r}"):
        methods("toy-scorer-x")


def test_toy_scorer_is_in_the_compare_defaults(toy):
    from harness.scoring import options
    from harness.scoring.compare_cells import methods

    assert options.compare_methods() == tuple(SCORERS.names()) and toy in options.compare_methods()
    for preset in ("quick", "full"):
        assert methods(preset) == tuple(SCORERS.names())
    with pytest.raises(UnknownNameError, match="preset"):
        methods("fast")


def test_toy_scorer_is_collected_by_the_compare_suite(toy, pytester: pytest.Pytester):
    """The compare suite itself, collected on tiny-llama, has a cell for the toy scorer."""
    shutil.copy(ROOT / "suites" / "test_compare_sensitivity.py", pytester.path)
    result = pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "no:cacheprovider", "--collect-only",
                                          "-q", "--model", "tiny-llama", "--results-dir", str(pytester.path / "r"))
    collected = result.stdout.str()
    assert f"test_method_cost[tiny-llama-{toy}]" in collected or f"[{toy}-tiny-llama]" in collected, collected


def test_cost_seconds_include_materializing_lazy_scores(toy):
    """A scorer that does its work at access (like magnitude, z_score) is timed doing it."""
    from harness.models import load_model

    lm = load_model("tiny-llama")
    result = score(lm, toy)
    assert result.cost.seconds >= TOY_DELAY * len(result.refs)
    assert len(result.refs) > 1


def test_every_chosen_subset_names_registered_entries():
    from harness.attacks import ATTACKS, DEFENSES, INPUT_ATTACKS
    from harness.attacks import options as attack_options
    from harness.faults import BIT_CLASSES
    from harness.pruning.options import FULL_SCORERS, SUITE_SCORERS
    from harness.scoring.options import DEFAULT_METHOD, FULL_TARGETED, QUICK_TARGETED

    for name in (*DEFAULT_METHOD, *QUICK_TARGETED, *FULL_TARGETED, *SUITE_SCORERS, *FULL_SCORERS):
        SCORERS.get(name.removesuffix("+protect"))
    assert attack_options.weight_attacks() == tuple(ATTACKS.names(tag="grid"))
    assert "replay" in ATTACKS.names() and "replay" not in attack_options.weight_attacks()
    assert attack_options.defense_names() == tuple(DEFENSES.names())
    assert attack_options.input_attack_names() == tuple(INPUT_ATTACKS.names())
    campaign = BIT_CLASSES.names(tag="campaign")
    assert campaign == ["sign", "exp_msb", "exponent", "mantissa_msb", "mantissa_lsb"]


def test_attack_options_read_the_registry_when_parsed():
    from harness.attacks import ATTACKS

    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("esa")
    group.addoption = group.add_argument  # the pytest group's method name
    from harness.attacks.options import AttackOptions
    from harness.option_values import add_option_set

    add_option_set(group, AttackOptions)
    with ATTACKS.registered("toy_attack", lambda session: None, tags=("grid",)):  # as @attack registers it
        assert parser.parse_args(["--attacks", "toy_attack"]).esa_attacks == ("toy_attack",)
    with pytest.raises(SystemExit):
        parser.parse_args(["--attacks", "toy_attack"])


def test_analyses_list_every_suite_file(tmp_path, capsys):
    real = find_analyses()
    assert {a.name for a in real} == {p.stem.removeprefix("test_") for p in (ROOT / "suites").glob("test_*.py")}
    (tmp_path / "test_toy_suite.py").write_text('"""Toy analysis: what a new suite measures. More text."""\n')
    (tmp_path / "test_toy.py").write_text('"""Toy baseline (Yu et al. 2024) of something.\n\nDetails."""\n')
    found = {a.name: a for a in find_analyses(tmp_path)}
    assert found["toy_suite"].summary == "Toy analysis: what a new suite measures."
    assert found["toy"].summary == "Toy baseline (Yu et al. 2024) of something."
    assert found["toy"].also_selects == ("toy_suite",)  # -k toy matches test_toy_suite.py too
    assert found["toy_suite"].also_selects == ()
    assert main(["analyses", "--suites", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy_suite  -k toy_suite  Toy analysis" in out
    assert "(-k toy also selects toy_suite)" in out


def test_analyses_without_a_suites_directory(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["analyses", "--suites", str(tmp_path / "missing")])
    assert exc.value.code == 2



def test_each_k_word_selects_what_the_analyses_list_says(tmp_path):
    """Collect every suite on tiny-llama once; ``-k <word>`` (a case-insensitive match on the node id:
    file, test name, parametrize id) selects the suite itself and exactly the suites listed as also
    selected. ``-k bitflip`` must select the bit-flip campaign alone."""
    run = subprocess.run([sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "--model", "tiny-llama", "--results-dir", str(tmp_path)],
                         check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    ids = [line for line in run.stdout.splitlines() if line.startswith("suites/") and "::" in line]
    assert ids, run.stdout[-2000:] + run.stderr[-2000:]
    analyses = find_analyses()
    wrong = []
    for a in analyses:
        selected = {i.split("::")[0].removeprefix("suites/test_").removesuffix(".py")
                    for i in ids if a.word.lower() in i.lower()}
        if selected != {a.name, *a.also_selects}:
            wrong.append(f"-k {a.word} selects {sorted(selected)}, listed {sorted({a.name, *a.also_selects})}")
    assert not wrong, "; ".join(wrong)
    assert next(a for a in analyses if a.name == "bitflip").also_selects == ()


def test_every_metric_a_suite_records_is_registered_with_its_direction():
    """The recorder takes each record's direction from the registry: a suite names no unregistered metric."""
    import dataclasses
    import re

    from harness.attribution.measures import AttributionChange
    from harness.metrics import METRICS

    root = Path(__file__).resolve().parent.parent
    suites = root / "suites"
    names = {m for f in suites.glob("test_*.py") for m in re.findall(r'recorder\.record\(\s*"(\w+)"', f.read_text())}
    # the rows the analyses' cells make for ``recorder.rows`` (harness.records.row.Row)
    names |= {m for f in (root / "harness").rglob("*.py") for m in re.findall(r'\bRow\(\s*"(\w+)"', f.read_text())}
    names |= {f.name for f in dataclasses.fields(AttributionChange)}  # recorded from change.to_dict()
    assert len(names) > 30
    assert sorted(n for n in names if n not in METRICS) == []
    assert not [f.name for f in suites.glob("test_*.py") if "higher_is_better" in f.read_text()]  # none by hand
