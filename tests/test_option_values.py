"""The option-value parsers (harness.option_values): what each accepts and its one-line wording."""

from __future__ import annotations

import argparse

import pytest

from harness.errors import HarnessError, UnknownNameError
from harness.option_values import as_option_type, bounded_float, choice, choices, comma_list, positive_int
from harness.registry import Registry


def test_comma_list():
    assert comma_list(" a, b,,a ", "names") == ("a", "b")
    assert comma_list(["a,b", "c", "a"], "names") == ("a", "b", "c")  # a repeated option
    assert comma_list("0=1,0=1", "entries", unique=False) == ("0=1", "0=1")
    assert comma_list(" , ", "names", required=False) == ()
    with pytest.raises(HarnessError, match=r"^expected a comma list of names, got ' , '$"):
        comma_list(" , ", "names")


@pytest.mark.parametrize("text, value", [("1", 1), (" 5", 5), ("+7", 7), ("1_000", 1000)])
def test_positive_int_reads_what_int_reads(text, value):
    assert positive_int(text, "trials") == value


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "x", ""])
def test_positive_int_refuses_in_one_wording(text):
    with pytest.raises(HarnessError, match=rf"^trials must be an integer >= 1, got {text!r}$"):
        positive_int(text, "trials")


def test_bounded_float():
    assert bounded_float("0.5", "sparsity", 0, 1, high_open=True) == 0.5
    assert bounded_float(0, "sparsity", 0, 1, high_open=True) == 0.0
    assert bounded_float("1", "threshold", 0, 1) == 1.0
    for bad in ("1", "-0.1", "nan", "x", None):
        with pytest.raises(HarnessError, match=r"^sparsity must be in \[0, 1\), got "):
            bounded_float(bad, "sparsity", 0, 1, high_open=True)
    with pytest.raises(HarnessError, match=r"^a fraction must be in \(0, 1\], got '0'$"):
        bounded_float("0", "a fraction", 0, 1, low_open=True)
    for bad in ("inf", "0", "-1"):
        with pytest.raises(HarnessError, match=r"^learning rate must be a finite number > 0, got "):
            bounded_float(bad, "learning rate", 0, low_open=True)
    with pytest.raises(HarnessError, match=r"^x must be a finite number, got 'inf'$"):
        bounded_float("inf", "x")


def test_choices_in_a_registrys_wording():
    toys = Registry("toy")
    toys.register("alpha", 1)
    toys.register("beta", 2)
    assert choice("beta", toys, "toy") == "beta"
    assert choices("beta, alpha,beta", toys, "toy") == ("beta", "alpha")
    assert choices("x", lambda: ("x", "y"), "letter") == ("x",)  # names read when parsed
    with pytest.raises(UnknownNameError) as err:
        choices("alpha,alpah", toys, "toy")
    assert str(err.value) == toys.unknown_message("alpah")
    assert str(err.value) == "unknown toy 'alpah'. Did you mean 'alpha'? Known: alpha, beta"
    with pytest.raises(HarnessError, match=r"^expected a comma list of toy names, got ''$"):
        choices("", toys, "toy")


def test_as_option_type_gives_argparse_a_usage_error(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=as_option_type(positive_int, "trials"))
    assert parser.parse_args(["--trials", "3"]).trials == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--trials", "0"])
    assert "argument --trials: trials must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_option_sets_add_their_options_and_read_them_back_typed():
    import argparse
    from dataclasses import dataclass

    from harness.option_values import add_option_set, option, positive_int, read_option_set

    @dataclass(frozen=True)
    class Toy:
        budget: int | None = option("--toy-budget", "most flips (default: the preset's)", parse=positive_int,
                                    args=("toy budget",))
        names: tuple[str, ...] = option("--toy-names", lambda: "names (default: a,b)", parse=comma_list,
                                        args=("toy names",), default_factory=lambda: ("a", "b"))
        keep: bool = option("--toy-keep", "keep (default: off)", default=False)

    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("esa")
    group.addoption = group.add_argument  # the pytest group's method name
    add_option_set(group, Toy)
    assert read_option_set(Toy, parser.parse_args([])) == Toy(None, ("a", "b"), False) == Toy()
    given = read_option_set(Toy, parser.parse_args(["--toy-budget", "3", "--toy-names", "x,y,x", "--toy-keep"]))
    assert given == Toy(3, ("x", "y"), True)
    assert "names (default: a,b)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--toy-budget", "0"])
    assert read_option_set(Toy, argparse.Namespace()) == Toy()  # options another plugin did not add: defaults
