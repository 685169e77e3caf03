"""The optimizer benchmark's low-bit state and torch integration cases, run once each at the
quick sizes with the timing replaced (tests never time anything): every competitor builds and
steps, each row counts its own bytes, and the targets are read from the rows."""

import dataclasses

import pytest

from fastnn.benchmarks import _harness as H
from fastnn.benchmarks import optim as bench


@pytest.fixture
def untimed(monkeypatch):
    """measure_rounds calls each function once and reports one round of 1 ms."""
    def once(fns, device="cpu", **kwargs):
        for fn in fns.values():
            fn()
        return {name: [1.0] for name in fns}

    monkeypatch.setattr(H, "measure_rounds", once)


def test_extra_cases_run_and_count_their_bytes(untimed):
    pytest.importorskip("torch")
    results = bench.run_extra("cpu", quick=True, progress=False)
    rows = {(r.case, r.impl): r for r in results}
    low = [r for r in results if r.case.startswith("Adam low-bit state")]
    n = bench.cases("cpu", True)[0][1][0]
    measured = {r.impl: r for r in low if r.ms is not None}
    assert measured["fastnn, float32 state (8 B/param)"].bytes == 28 * n
    assert measured["fastnn, bfloat16 state (4 B/param)"].bytes == 20 * n
    assert measured["fastnn, int8 state (2.03 B/param)"].bytes == int((16 + 16 / 256) * n)
    assert "torch fused, float32 state (8 B/param)" in measured
    assert "fastnn via torch integration, int8 state (2.03 B/param)" in measured
    bnb = next(r for r in low if r.impl.startswith("bitsandbytes"))
    assert bnb.ms is not None or "bitsandbytes" in bnb.note
    integration = [case for case, _ in rows if case.startswith("Adam via torch integration")]
    assert len(set(integration)) == 2
    for case in set(integration):
        assert {impl for c, impl in rows if c == case} == {"fastnn", "torch fused", "torch foreach"}
        assert all(rows[(case, impl)].ms == 1.0 for impl in ("fastnn", "torch fused", "torch foreach"))


def test_targets_read_the_low_bit_and_integration_rows():
    case = "Adam low-bit state, 1 x 32M"
    results = [H.Result("optim", case, "fastnn, bfloat16 state (4 B/param)", "cpu", ms=7.0),
               H.Result("optim", case, "fastnn, int8 state (2.03 B/param)", "cpu", ms=5.0),
               H.Result("optim", case, "torch fused, float32 state (8 B/param)", "cpu", ms=10.0),
               H.skipped("optim", case, "bitsandbytes Adam8bit, int8 state (2.03 B/param)", "cpu", "not installed"),
               H.Result("optim", "Adam via torch integration, bfloat16 parameters, 1 x 32M", "fastnn", "cpu", ms=2.0),
               H.Result("optim", "Adam via torch integration, bfloat16 parameters, 1 x 32M", "torch fused", "cpu",
                        ms=3.0)]
    lines = bench.targets(results, "cpu")
    assert "Adam via torch integration bfloat16 parameters, 1 x 32M: fastnn vs torch fused, target >= 1.0x: " \
           "1.50x (met)" in lines
    assert "state bytes per parameter: float32 8, bfloat16 4, int8 2.03" in lines
    assert f"{case}, bfloat16 state: fastnn vs torch fused (float32 state), target >= 1.3x: 1.43x (met)" in lines
    assert f"{case}, int8 state: fastnn vs torch fused (float32 state), target >= 1.6x: 2.00x (met)" in lines
    assert f"{case}, int8 state: fastnn vs bitsandbytes Adam8bit, target >= 1.0x: not measured" in lines


def test_state_quality_lines_stay_within_the_bounds():
    lines = bench.state_quality("cpu", n=1 << 16, steps=5)
    assert [line.split(" state")[0] for line in lines] == ["bfloat16", "int8"]
    for line, bound in zip(lines, (0.39, 6.25)):
        error = float(line.split("state error <= ")[1].split("%")[0])
        assert 0 < error <= bound, line


def test_ratios_pair_the_rounds_of_a_case():
    """On a machine that speeds up and slows down between rounds (this VM's memory), a ratio of
    two medians can compare a fast round with a slow one; the harness takes each round's ratio
    and their median. Here the competitor is 1.6x slower in every round, but the machine turned
    fast again before its batch of round 2: the medians say 0.8x, the pairs 1.6x."""
    mine = H.Result("optim", "Adam, 1 x 32M", "fastnn", "cpu", ms=2.0, bytes=28, rounds=[1.0, 1.0, 2.0, 2.0, 2.0])
    theirs = H.Result("optim", "Adam, 1 x 32M", "torch fused", "cpu", ms=1.6, bytes=28,
                      rounds=[1.6, 1.6, 1.6, 3.2, 3.2])
    probe = H.Result("optim", "Adam, 1 x 32M", H.BANDWIDTH_ROW, "cpu", ms=1.0, bytes=56,
                     rounds=[0.5, 0.5, 1.0, 1.0, 1.0])
    assert theirs.ms / mine.ms == pytest.approx(0.8)
    assert H.speedup(mine, theirs) == pytest.approx(1.6)
    lines = H.table([probe, mine, theirs]).splitlines()
    # % of bandwidth, round by round: fastnn moves half the probe's bytes in twice its time
    # (25%); the competitor the same bytes in 3.2 times the probe's time (16%)
    assert lines[-2].endswith("| 25 | 1.00x |")
    assert lines[-1].endswith("| 16 | 1.60x |")
    # rows timed apart (no rounds, or different counts) fall back to the ratio of the medians
    assert H.speedup(dataclasses.replace(mine, rounds=None), theirs) == pytest.approx(0.8)
    assert H.speedup(mine, dataclasses.replace(theirs, rounds=[1.6])) == pytest.approx(0.8)
    assert H.speedup(mine, dataclasses.replace(theirs, ms=None)) is None


def test_low_bit_targets_read_the_paired_ratios():
    case = "Adam low-bit state, 1 x 32M"
    rows = [H.Result("optim", case, f"fastnn, {bench._state_label('int8')}", "cpu", ms=6.0,
                     rounds=[5.0, 5.0, 9.0, 9.0, 9.0]),
            H.Result("optim", case, f"torch fused, {bench._state_label('float32')}", "cpu", ms=8.5,
                     rounds=[8.5, 8.5, 8.5, 15.0, 15.0])]
    line = next(x for x in bench._low_bit_targets(rows) if "int8 state: fastnn vs torch fused" in x)
    assert line.endswith("1.67x (met)")
