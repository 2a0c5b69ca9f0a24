"""Black-box tests of the pytest plugin with ``pytester`` on tiny random models."""

from __future__ import annotations

import sqlite3

import pytest

from harness.errors import HarnessError

pytest_plugins = ["pytester"]

SUITE = """
import torch

def test_measure(lm, eval_windows, clean, recorder):
    recorder.record("perplexity", clean.result.perplexity, method="none")
    assert clean.result.perplexity > 1

def test_claim(lm, clean, recorder):
    recorder.claim("clean_perplexity_max", clean.result.perplexity)
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


def test_ids_selection_and_records(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    bounds = pytester.mkdir("suites") / "bounds"
    bounds.mkdir()
    (bounds / "demo.toml").write_text("# test bound\n[tiny-llama]\nclean_perplexity_max = 1e9\n"
                                      "[tiny-opt]\nclean_perplexity_max = 1.0\n")
    result = _run(pytester, "--model", "tiny-llama,tiny-opt", "--eval-tokens", "64", "--window", "32", "-v")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_measure?tiny-llama? PASSED*", "*test_claim?tiny-opt? FAILED*",
                                 "*claim clean_perplexity_max failed for tiny-opt*"])
    rows = _rows(pytester, "SELECT suite, model, metric, bound, passed, seed, dtype FROM records ORDER BY id")
    assert ("demo", "tiny-llama", "clean_perplexity_max", 1e9, 1, 0, "float32") in rows
    assert ("demo", "tiny-opt", "clean_perplexity_max", 1.0, 0, 0, "float32") in rows
    runs = _rows(pytester, "SELECT run_id, git_commit, device, torch, transformers, python, command FROM runs")
    assert len(runs) == 1 and runs[0][2].startswith("cpu") and runs[0][3]

    result = _run(pytester, "--model", "tiny-llama,tiny-opt", "--eval-tokens", "64", "--window", "32",
                  "-k", "tiny-opt and measure")
    result.assert_outcomes(passed=1, deselected=3)


def test_family_markers(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    result = _run(pytester, "--model", "tiny-llama,tiny-bloom", "--eval-tokens", "64", "--window", "32",
                  "-m", "bloom")
    result.assert_outcomes(passed=2, deselected=2)


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
    for args, message in ((("--device", "tpu"), "*device must be cpu, cuda, cuda:N or auto*"),
                          (("--dtype", "fp8"), "*dtype must be one of*"),
                          (("--eval-tokens", "0"), "*must be at least 1*"),
                          (("--trials", "0"), "*argument --trials: must be at least 1, got 0*")):
        result = _run(pytester, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])


def test_eval_tokens_beyond_corpus(pytester: pytest.Pytester):
    pytester.makepyfile(test_demo=SUITE)
    result = _run(pytester, "--model", "tiny-llama", "--eval-tokens", "100000000", "-k", "measure")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*HarnessError: * tokens asked for, but pydoc-topics has only*"])


def test_dotted_claim_name_in_a_bounds_file_is_an_error(tmp_path):
    """TOML reads `a_0.01_max = 1` as a table; a silently missing bound would let a claim go unchecked."""
    from fixtures.session import bound_for

    (tmp_path / "dotted.toml").write_text('[m]\nok_max = 1.0\nx_0.01_ppl_ratio_max = 1.0\n')
    with pytest.raises(HarnessError, match="quote them"):
        bound_for(tmp_path, "dotted", "m", "ok_max")
    (tmp_path / "quoted.toml").write_text('[m]\n"x_0.01_ppl_ratio_max" = 2.0\n')
    assert bound_for(tmp_path, "quoted", "m", "x_0.01_ppl_ratio_max") == 2.0
