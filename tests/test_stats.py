"""The harness's statistics against values worked out by hand (and from printed t tables)."""

from __future__ import annotations

import math

import pytest

from mnist_zoo.compare import format_p, mcnemar, summarize, verdict, welch


def test_summarize_by_hand():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; squared deviations 2.25+0.25+0.25+2.25 = 5 -> variance 5/3, std 1.29099, sem 0.645497
    assert s["n"] == 4 and s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["sem"] == pytest.approx(math.sqrt(5 / 3) / 2)
    assert s["t_critical"] == pytest.approx(3.182, abs=5e-4)  # t table: 97.5% quantile, 3 degrees of freedom
    assert s["ci_low"] == pytest.approx(2.5 - 3.1824 * 0.645497, abs=1e-3)  # 0.4457
    assert s["ci_high"] == pytest.approx(2.5 + 3.1824 * 0.645497, abs=1e-3)  # 4.5543
    assert (s["min"], s["max"]) == (1.0, 4.0)


def test_summarize_five_seeds_t_value():
    s = summarize([0.990, 0.991, 0.992, 0.993, 0.994])
    assert s["t_critical"] == pytest.approx(2.776, abs=5e-4)  # t table, 4 degrees of freedom
    assert s["mean"] == pytest.approx(0.992)
    # deviations ±0.002, ±0.001, 0: sum of squares 1e-5, over n - 1 = 4
    assert s["std"] == pytest.approx(math.sqrt(0.00001 / 4))
    assert s["ci_high"] - s["mean"] == pytest.approx(2.7764 * math.sqrt(0.00001 / 4) / math.sqrt(5), rel=1e-4)


def test_summarize_degenerate():
    one = summarize([0.98])
    assert one["mean"] == 0.98 and one["std"] is None and one["ci_low"] is None and one["ci_high"] is None
    flat = summarize([0.5, 0.5, 0.5])
    assert flat["std"] == 0 and flat["ci_low"] == flat["ci_high"] == 0.5
    with pytest.raises(ValueError):
        summarize([])


def _answers(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


def test_mcnemar_exact_by_hand():
    m = mcnemar(*_answers(both=90, a_only=1, b_only=9, neither=5))
    # 10 disagreements, 1 for A: two-sided exact binomial p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert m["p_value"] == pytest.approx(22 / 1024)
    assert (m["a_only"], m["b_only"], m["both"], m["neither"], m["images"]) == (1, 9, 90, 5, 105)


def test_mcnemar_more_by_hand():
    # 0 of 6 disagreements for A: p = 2 * 1/64
    assert mcnemar(*_answers(10, 0, 6, 0))["p_value"] == pytest.approx(2 / 64)
    # balanced disagreements: no evidence at all
    assert mcnemar(*_answers(10, 5, 5, 3))["p_value"] == pytest.approx(1.0)
    # no disagreements: p = 1 by definition
    assert mcnemar(*_answers(10, 0, 0, 3))["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True, False], [True])


def test_welch_by_hand():
    w = welch([1, 2, 3, 4], [2, 4, 6, 9])
    # means 2.5 and 5.25; variances 5/3 and 26.75/3; se^2 = 0.416667 + 2.229167 = 2.645833, se = 1.626602
    # df = se^4 / ((0.416667^2)/3 + (2.229167^2)/3) = 7.000434 / 1.714265 = 4.0836
    assert w["difference"] == pytest.approx(-2.75)
    assert w["df"] == pytest.approx(4.0836, abs=1e-3)
    half = (w["ci_high"] - w["ci_low"]) / 2
    # t quantile at 4.08 df, interpolated in 1/df between the table's 2.7764 (df 4) and 2.5706 (df 5): 2.7553
    assert half / 1.626602 == pytest.approx(2.7553, abs=2e-3)
    assert 0.16 < w["p_value"] < 0.17  # |t| = 2.75 / 1.6266 = 1.6906 on ~4.08 df


def test_welch_degenerate():
    assert welch([0.9, 0.9], [0.8, 0.8])["p_value"] is None  # no spread at all: nothing to test against
    with pytest.raises(ValueError):
        welch([0.9], [0.8, 0.7])


def test_verdict_words():
    strong = mcnemar(*_answers(9000, 300, 50, 650))
    good, poor = [0.99, 0.991, 0.992], [0.92, 0.921, 0.919]
    win = verdict("lenet", good, "mlp", poor, [strong] * 3, welch(good, poor))
    assert win["significant"] and win["better"] == "lenet" and win["words"].startswith("lenet beats mlp")
    # B listed first: the direction still comes out right
    flip = verdict(
        "mlp", poor, "lenet", good, [mcnemar(*_answers(9000, 50, 300, 650))] * 3, welch(poor, good)
    )
    assert flip["significant"] and flip["better"] == "lenet"
    weak = mcnemar(*_answers(9000, 30, 28, 942))
    tie = verdict("a", [0.9, 0.91], "b", [0.905, 0.9], [weak, weak], welch([0.9, 0.91], [0.905, 0.9]))
    assert not tie["significant"] and tie["better"] is None and "not significantly different" in tie["words"]
    single = verdict("a", [0.99], "b", [0.92], [strong], None)
    assert single["significant"] and "One seed only" in single["words"]
    mixed = verdict("a", [0.99, 0.95], "b", [0.92, 0.96], [strong, strong], welch([0.99, 0.95], [0.92, 0.96]))
    assert not mixed["significant"] and "seed-to-seed spread" in mixed["words"]


def test_format_p():
    assert format_p(0.0001) == "p < 0.001" and format_p(0.0214) == "p = 0.021" and format_p(None) == "p n/a"
