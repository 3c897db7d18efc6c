"""The declared parameter constraints and the ``validated`` decorator."""

from __future__ import annotations

import numpy as np
import pytest

from quantus_roar._validation import (
    Choice,
    Func,
    Int,
    Percentages,
    Real,
    Seed,
    check_params,
    validated,
)


class Base:
    @validated(n=Int(1), share=Real(0, 1, open="both"), kind=Choice(("a", None)),
               func=Func("callable or None", optional=True), seed=Seed())
    def __init__(self, n=5, share=0.2, kind="a", func=None, seed=0, **rest):
        self.values = (n, share, kind, func, seed, rest)


class Child(Base):
    pass


def test_values_are_cleaned_and_defaults_trusted():
    c = Child(np.int64(3), np.float32(0.5), None, len, seed=np.uint8(7), extra=1)
    n, share, kind, func, seed, rest = c.values
    assert (type(n), type(share), type(seed)) == (int, float, int)
    assert (n, share, kind, func, seed, rest) == (3, 0.5, None, len, 7, {"extra": 1})
    assert Child().values[:3] == (5, 0.2, "a")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"n": 0}, ValueError, r"The 'n' parameter of Child must be an integer >= 1\. Got 0"),
    ({"n": True}, TypeError, r"'n' parameter of Child must be an integer\. Got True"),
    ({"n": 2.0}, TypeError, r"must be an integer\. Got 2\.0"),
    ({"share": 1.0}, ValueError, r"'share' .* a finite number > 0 and < 1\. Got 1\.0"),
    ({"share": float("nan")}, ValueError, r"'share' .*Got nan"),
    ({"share": "0.5"}, TypeError, r"'share' .* a number\. Got '0\.5'"),
    ({"kind": "b"}, ValueError, r"'kind' .* one of \['a', None\]\. Got 'b'"),
    ({"func": 3}, TypeError, r"'func' .* callable or None\. Got 3"),
    ({"seed": -1}, ValueError, r"'seed' .* in \[0, 2\*\*63\)\. Got -1"),
])
def test_each_constraint_names_the_parameter_and_the_subclass(kwargs, error, match):
    with pytest.raises(error, match=match):
        Child(**kwargs)


def test_choice_does_not_take_a_bool_for_a_number_or_an_array_for_a_name():
    flags = Choice(("auto", 0, 1))
    assert flags(0, "x", "f") == 0 and flags(np.int64(1), "x", "f") == 1
    with pytest.raises(ValueError, match="Got True"):
        flags(True, "x", "f")
    with pytest.raises(ValueError, match=r"one of \['auto', 0, 1\]"):
        flags(np.array(["auto", "x"]), "x", "f")


def test_functions_are_named_by_their_qualified_name_and_misdeclarations_fail_early():
    @validated(k=Int(2))
    def top(k):
        return k

    with pytest.raises(ValueError, match=r"'k' parameter of test_functions_.*<locals>\.top "
                                         r"must be an integer >= 2\. Got 1"):
        top(1)
    with pytest.raises(TypeError, match=r"declares constraints for \['q'\]"):
        validated(q=Int())(lambda k: k)
    with pytest.raises(TypeError, match="top: too many positional arguments"):
        top(1, 2)


def test_check_params_leaves_undeclared_and_missing_values_alone():
    out = check_params("f", {"p": Percentages(), "absent": Int()}, {"p": [50, 10], "x": "y"})
    assert out == {"p": (50.0, 10.0), "x": "y"}
    with pytest.raises(ValueError, match=r"distinct numbers"):
        check_params("f", {"p": Percentages()}, {"p": [10, 10]})
