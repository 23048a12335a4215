"""The calibration behind the review's thresholds: its fit rule, and README's held-out
table re-measured on the first scenes of the held-out half."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.calibration import HEADER, HELD_OUT_SEEDS, fit_linear, judge, table_rows, tally

README = Path(__file__).resolve().parents[1] / "README.md"
SCENES = 4  # of the 40 held-out scenes README's table counts
# Tolerances, in percentage points, between the rates of those scenes and README's.
DOUBTED_POINTS, ACCEPTED_POINTS = 2.0, 3.0


def readme_rows() -> list[list[str]]:
    lines = README.read_text().splitlines()
    start = lines.index("| " + " | ".join(HEADER) + " |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def counts(cell: str) -> tuple[int, int]:
    """'3 of 120 (2.5 %)' or '3 / 120' -> (3, 120); '–' -> (0, 0)."""
    found = re.match(r"(\d+) (?:of|/) (\d+)", cell)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def test_readmes_held_out_table_holds_on_the_first_held_out_scenes():
    """Each count of those scenes is at most README's (they are part of its set), and
    the overall rates are within DOUBTED_POINTS / ACCEPTED_POINTS of README's."""
    quoted = readme_rows()
    measured = table_rows(tally(judge(HELD_OUT_SEEDS[:SCENES])))
    assert [row[:2] for row in measured] == [row[:2] for row in quoted]
    for ours, theirs in zip(measured, quoted):
        for mine, readmes in zip(ours[2:], theirs[2:]):
            (count, total), (quoted_count, quoted_total) = counts(mine), counts(readmes)
            assert count <= quoted_count and total <= quoted_total, (ours[:2], mine, readmes)
    (doubted, right), (quoted_doubted, quoted_right) = counts(measured[-1][2]), counts(quoted[-1][2])
    (accepted, erring), (quoted_accepted, quoted_erring) = counts(measured[-1][-1]), counts(quoted[-1][-1])
    assert right > 80 and erring > 25
    assert 100 * doubted / right == pytest.approx(100 * quoted_doubted / quoted_right, abs=DOUBTED_POINTS)
    assert 100 * accepted / erring == pytest.approx(100 * quoted_accepted / quoted_erring, abs=ACCEPTED_POINTS)


def test_the_fit_puts_a_threshold_in_the_middle_of_the_band_between_right_and_wrong():
    # (signal, size): right answers up to 0.3 x size, errors from 0.5 x size, on 10-px objects.
    good = [(3.0, 10.0), (2.0, 10.0)]
    erring = [(5.0, 10.0), (8.0, 10.0)]
    fit = fit_linear(good, erring)
    assert (fit.misses, fit.errors) == (0, 2)
    assert fit.px + fit.share * 10.0 == pytest.approx(4.0, abs=0.06)  # half-way from 3 to 5


def test_the_fit_takes_the_pixel_allowance_that_misses_fewest_then_the_widest_band():
    # A small error that only a share (no pixel allowance) can separate from the right answers.
    good = [(3.0, 100.0), (1.0, 10.0)]
    erring = [(1.4, 4.0), (60.0, 100.0)]
    fit = fit_linear(good, erring)
    assert (fit.px, fit.misses) == (0.0, 0)
    assert erring[0][0] > fit.px + fit.share * erring[0][1]
    assert all(signal <= fit.px + fit.share * size for signal, size in good)
