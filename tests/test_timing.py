"""Phases of a job's wall time: nesting, totals, and the rows of the report's time table."""

from onmkd.timing import Phases, by_kind


def test_phases_nest_and_add_up_to_the_wall_time():
    t = [0.0]
    ph = Phases(clock=lambda: t[0])
    with ph("setup"):
        t[0] += 1
    with ph("trials"):
        for n in range(2):
            with ph(f"trial {n}"):
                assert ph.current() == f"trials/trial {n}"
                with ph("steps"):
                    t[0] += 2
                with ph("dev"):
                    with ph("passages"):
                        t[0] += 0.5
                    t[0] += 0.5
    with ph("final"):
        with ph("OnMKD seed 1"):
            with ph("train"):
                with ph("steps"):
                    t[0] += 3
            with ph("test"):
                t[0] += 1
    t[0] += 0.25
    s = ph.summary()
    assert s["wall_s"] == 11.25 and s["top"] == {"setup": 1.0, "trials": 6.0, "final": 4.0}
    assert s["unaccounted_s"] == 0.25
    rows = {k: (v, c) for k, v, c in by_kind(s)}
    assert rows["trials/steps"] == (4.0, 2) and rows["trials/dev"] == (2.0, 2)
    assert rows["trials/dev/passages"] == (1.0, 2)  # nested: part of trials/dev, not added to it
    assert rows["final/OnMKD seed 1/train"] == (3.0, 1) and "final/OnMKD seed 1/train/steps" not in rows
    assert [k for k, _, _ in by_kind(s)][0] == "setup" and by_kind(s)[-1][0] == "unaccounted"
    # another worker's trials are added to the trial rows, not to this command's top level
    other = {"phases": {"trials/trial 9/steps": 5.0}, "counts": {"trials/trial 9/steps": 4}}
    rows = {k: (v, c) for k, v, c in by_kind(s, [other])}
    assert rows["trials/steps"] == (9.0, 6) and rows["trials"] == (6.0, 1)
