"""The shared argparse types: each value is checked when the arguments are parsed."""

from __future__ import annotations

import argparse

import pytest

from un2clip.argtypes import (
    finite_float,
    float_in,
    fraction,
    nonneg_float,
    nonneg_int,
    not_all_zero,
    open_fraction,
    positive_float,
    positive_int,
    positive_int_list,
)


@pytest.mark.parametrize(("parse", "good", "bad"), [
    (positive_int, {"1": 1, "12": 12}, ["0", "-1", "1.5", "x", ""]),
    (nonneg_int, {"0": 0, "3": 3}, ["-1", "2.0", "nan"]),
    (fraction, {"0": 0.0, "0.3": 0.3, "1": 1.0}, ["2", "-0.1", "nan", "inf", "x"]),
    (open_fraction, {"1": 1.0, "0.5": 0.5}, ["0", "1.01"]),
    (positive_float, {"1e-3": 1e-3, "7": 7.0}, ["0", "-2", "inf", "nan"]),
    (nonneg_float, {"0": 0.0, "2.5": 2.5}, ["-1e-9", "nan"]),
    (finite_float, {"-3": -3.0, "0": 0.0}, ["nan", "inf", "-inf", "one"]),
    (float_in(0.0, 1.0, high_open=True), {"0": 0.0, "0.99": 0.99}, ["1", "1.5"]),
    (positive_int_list, {"64,128,256": [64, 128, 256], "3": [3], "1, 2,": [1, 2]}, ["", ",", "1,0", "2,-1", "a,b",
                                                                                       "1.5"]),
])
def test_types_accept_and_refuse(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)


def test_parser_error_names_the_option_and_value(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--batch-size", type=positive_int)
    with pytest.raises(SystemExit) as exit_info:
        p.parse_args(["--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "argument --batch-size: must be a positive integer, not '0'" in capsys.readouterr().err


def test_not_all_zero():
    not_all_zero(None, "--w")
    not_all_zero([0, 0, 1], "--w")
    with pytest.raises(ValueError, match="--w: the weights are all zero"):
        not_all_zero([0.0] * 6, "--w")
