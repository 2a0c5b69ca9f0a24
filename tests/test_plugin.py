"""Black-box tests of the pytest plugin with ``pytester`` on tiny random models."""

from __future__ import annotations

import sqlite3

import pytest

from harness.errors import HarnessError

pytest_plugins = ["pytester"]

SUITE = """
import torch
from harness.claims import ClaimSet, greater

CLAIMS = ClaimSet("demo")
PPL = CLAIMS.bound("clean_perplexity", "perplexity stays low", side="max", statistic="perplexity")
ABOVE_ONE = CLAIMS.relation("perplexity_above_one", "perplexity exceeds 1", statistic="perplexity",
                            pretrained_only=False)
TRAINED = CLAIMS.relation("trained_only", "only about trained models", statistic="perplexity")

def test_measure(lm, eval_windows, clean, recorder):
    recorder.record("perplexity", clean.result.perplexity, method="none")
    assert clean.result.perplexity > 1

def test_claim(lm, clean, recorder):
    recorder.claim(PPL, clean.result.perplexity)

def test_relations(lm, clean, recorder):
    recorder.claim(ABOVE_ONE, greater(clean.result.perplexity, 1.0))
    recorder.claim(TRAINED, greater(clean.result.perplexity, 1.0))
"""

LEAK = """
import torch

def test_leaks(lm):
    with torch.no_grad():
        next(lm.model.parameters()).view(-1)[0] += 1.0

def test_after_leak_model_is_clean(lm, esa):
    assert esa.options.models
"""


@pytest.fixture(scope="module", autouse=True)
def _import_model_code():
    """Import the model classes once out here: in-process pytester runs drop modules first imported
    inside them, which breaks transformers' lazy imports on the next run."""
    from harness.models import load_model

    for name in ("tiny-llama", "tiny-opt", "tiny-bloom"):
        load_model(name)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "no:cacheprovider",
                                        "--results-dir", str(pytester.path / "res"), *args)


def _rows(pytester: pytest.Pytester, sql: str) -> list[tuple]:
    with sqlite3.connect(pytester.path / "res" / "results.sqlite") as conn:
        return conn.execute(sql).fetchall()


def _bounds(pytester: pytest.Pytester, text: str) -> None:
    bounds = pytester.path / "suites" / "bounds"
    bounds.mkdir(parents=True, exist_ok=True)
    (bounds / "demo.toml").write_text(text)


def test_ids_selection_and_records(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    _bounds(pytester, "# test bound\n[tiny-llama]\nclean_perplexity = 1e9\n[tiny-opt]\nclean_perplexity = 1.0\n")
    result = _run(pytester, "--model", "tiny-llama,tiny-opt", "--eval-tokens", "64", "--window", "32", "-v")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*test_measure?tiny-llama? PASSED*", "*test_claim?tiny-opt? FAILED*",
                                 "*claim demo.clean_perplexity failed: * is not <= 1 on tiny-opt*"])
    rows = _rows(pytester, "SELECT suite, model, metric, bound, passed, seed, dtype, outcome FROM records ORDER BY id")
    assert ("demo", "tiny-llama", "clean_perplexity", 1e9, 1, 0, "float32", "passed") in rows
    assert ("demo", "tiny-opt", "clean_perplexity", 1.0, 0, 0, "float32", "failed") in rows
    assert ("demo", "tiny-opt", "perplexity_above_one", 1.0, 1, 0, "float32", "passed") in rows
    assert ("demo", "tiny-opt", "trained_only", None, None, 0, "float32", "not_applicable") in rows
    runs = _rows(pytester, "SELECT run_id, git_commit, device, torch, transformers, python, command FROM runs")
    assert len(runs) == 1 and runs[0][2].startswith("cpu") and runs[0][3]

    result = _run(pytester, "--model", "tiny-llama,tiny-opt", "--eval-tokens", "64", "--window", "32",
                  "-k", "tiny-opt and measure")
    result.assert_outcomes(passed=1, deselected=5)


def test_claims_summary_and_strict_claims(pytester: pytest.Pytester):
    """Four outcomes in the terminal summary; --strict-claims fails on an unverified bound and says how to fix it."""
    pytester.makepyfile(test_demo=SUITE)
    _bounds(pytester, "[tiny-opt]\nclean_perplexity = 1e9\n")
    args = ("--model", "tiny-llama,tiny-opt", "--eval-tokens", "64", "--window", "32")
    result = _run(pytester, *args)
    result.assert_outcomes(passed=6)
    assert result.ret == 0
    # the model-health claims first: on random weights only output_finite applies (the rest n/a, with the reason)
    result.stdout.fnmatch_lines(["*= claims =*", "claims: 5 passed, 0 failed, 1 unverified, 10 not applicable (62%), "
                                 "0 unchecked", "  model: 2 passed, 0 failed, 0 unverified, 8 n/a (80%), 0 unchecked",
                                 "  demo: 3 passed, 0 failed, 1 unverified, 2 n/a (33%), 0 unchecked",
                                 "UNVERIFIED demo.clean_perplexity ?tiny-llama?*", "*python -m reports export-bounds*"])
    result = _run(pytester, *args, "--strict-claims")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*--strict-claims: 1 unverified claim(s): the session fails*"])
    result = _run(pytester, "--model", "tiny-opt", "--eval-tokens", "64", "--window", "32", "--strict-claims")
    assert result.ret == 0


UNDECIDED = """
import pytest
from harness.claims import ClaimSet, rate_greater

CLAIMS = ClaimSet("demo")
APART = CLAIMS.relation("rates_apart", "one rate above another", statistic="collapse_rate", pretrained_only=False)
SKIPPED = CLAIMS.relation("never_checked", "checked by a test that skips", statistic="x", pretrained_only=False)

def test_too_few_trials(lm, recorder):
    recorder.claim(APART, rate_greater(1, 1, 0, 1))

def test_skips_before_its_claim(lm, recorder):
    pytest.skip("a reason that is not structural")
"""


def test_strict_fails_on_undecided_relations_unchecked_tests_and_an_unreadable_store(pytester: pytest.Pytester):
    """--strict-claims: a relation the run was too small to decide fails; a selected test that skipped without
    deciding any claim is unchecked and fails the session; so does a store that cannot be read back."""
    pytester.makepyfile(test_demo=UNDECIDED)
    args = ("--model", "tiny-opt", "--eval-tokens", "64", "--window", "32")
    result = _run(pytester, *args)
    assert result.ret == 0  # not strict: unverified and unchecked are reported, not failed
    result.stdout.fnmatch_lines(["claims: 1 passed, 0 failed, 1 unverified, 4 not applicable (67%), 1 unchecked",
                                 "UNVERIFIED demo.rates_apart ?tiny-opt?*undecided: 1 vs 1 trials cannot separate*",
                                 "UNCHECKED *test_skips_before_its_claim?tiny-opt?: ended without deciding any claim"])
    result = _run(pytester, *args, "--strict-claims")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*claim demo.rates_apart failed*undecided*",
                                 "*--strict-claims: 1 selected test(s) checked none of their claims*"])
    pytester.makeconftest("""
import pytest
from fixtures.session import session_of

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    (session_of(session.config).options.results_dir / "results.sqlite").write_bytes(b"garbage")
""")
    only_relations = SUITE.replace("def test_claim(", "def _unused(").replace("def test_measure(", "def _u(")
    pytester.makepyfile(test_demo=only_relations)
    result = _run(pytester, "--model", "tiny-opt", "--eval-tokens", "64", "--window", "32", "--strict-claims")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*the results store could not be read*"])


def test_bounds_file_naming_an_undeclared_claim_is_one_line(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    for text, message in (("[tiny-llama]\nclean_perplexity_max = 30\n",
                           "*demo.toml: ?tiny-llama? clean_perplexity_max is not declared; suite demo declares the "
                           "bounds clean_perplexity*"),
                          ("[tiny-llama]\nperplexity_above_one = 2\n", "*perplexity_above_one is a relation*")):
        _bounds(pytester, text)
        result = _run(pytester, "--model", "tiny-llama")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
        assert "Traceback" not in result.stderr.str()


def test_family_markers_are_the_model_families(pytestconfig: pytest.Config):
    """One source: the architecture families (harness.models.archmap.ARCH_MAPS); the plugin declares a marker
    for each, and every registered model's family has one."""
    from fixtures.plugin import FAMILY_MARKERS, family_marker
    from harness.models import MODELS
    from harness.models.archmap import ARCH_MAPS

    declared = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    assert FAMILY_MARKERS == tuple(family_marker(f) for f in ARCH_MAPS)
    assert set(FAMILY_MARKERS) <= declared
    assert {family_marker(spec.family) for _, spec in MODELS.items()} <= set(FAMILY_MARKERS)


def test_family_markers(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    result = _run(pytester, "--model", "tiny-llama,tiny-bloom", "--eval-tokens", "64", "--window", "32",
                  "-m", "bloom")
    result.assert_outcomes(passed=3, deselected=3)


def test_guard_fails_the_leaking_test_only(pytester: pytest.Pytester):
    pytester.makepyfile(test_leak=LEAK)
    result = _run(pytester, "--model", "tiny-llama")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test left 1 tensor(s) of tiny-llama changed*"])


def test_unknown_model_is_one_line(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    result = _run(pytester, "--model", "gptneo125m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model 'gptneo125m'. Did you mean 'gpt-neo-125m'?*"])
    assert "Traceback" not in result.stderr.str()


def test_bad_option_values(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    for args, message in (
        (("--device", "tpu"), "*argument --device: unknown device 'tpu'*Known: cpu, cuda, cuda:N, auto*"),
        (("--dtype", "fp8"), "*argument --dtype: unknown dtype 'fp8'. Known: fp32, float32, fp16, *"),
        (("--eval-tokens", "0"), "*argument --eval-tokens: eval tokens must be an integer >= 1, got '0'*"),
        (("--trials", "x"), "*argument --trials: trials must be an integer >= 1, got 'x'*"),
        (("--preset", "deep"), "*argument --preset: unknown preset 'deep'. Known: quick, full*"),
        (("--sparsities", ","), "*argument --sparsities: expected a comma list of sparsities*"),
    ):
        result = _run(pytester, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])


def test_dtype_words_are_the_loaders(pytester: pytest.Pytester):
    """--dtype takes every word of harness.models.device.DTYPES, as the loader does (``half`` too); a word that
    the plugin took before is recorded as written."""
    pytester.makepyfile(test_demo=SUITE)
    for word, recorded in (("half", "half"), ("FP16", "fp16"), ("torch.bfloat16", "bfloat16"), ("fp32", "fp32")):
        result = _run(pytester, "--model", "tiny-llama", "--dtype", word, "--collect-only")
        assert result.ret == 0
        result.stdout.fnmatch_lines([f"esa: models=tiny-llama device=cpu dtype={recorded} *"])


def test_eval_tokens_beyond_corpus(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    result = _run(pytester, "--model", "tiny-llama", "--eval-tokens", "100000000", "-k", "measure")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*HarnessError: * tokens asked for, but pydoc-topics has only*"])


def test_dotted_claim_name_in_a_bounds_file_is_an_error(tmp_path):
    """TOML reads `a_0.01 = 1` as a table; a silently missing bound would let a claim go unchecked."""
    from harness.claims import ClaimSet, bound_for

    claims = ClaimSet("dotted_demo")
    ok = claims.bound("ok", "ok", side="max", statistic="x")
    quoted = claims.bound("x_0.01_ppl_ratio", "x", side="max", statistic="ppl_ratio")
    (tmp_path / "dotted_demo.toml").write_text('[m]\nok = 1.0\nx_0.01_ppl_ratio = 1.0\n')
    with pytest.raises(HarnessError, match="quote them"):
        bound_for(tmp_path, ok, "m")
    (tmp_path / "dotted_demo.toml").write_text('[m2]\n"x_0.01_ppl_ratio" = 2.0\n')
    assert bound_for(tmp_path, quoted, "m2") == 2.0
