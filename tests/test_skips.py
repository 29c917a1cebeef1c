"""The skip monitor: when a run's unreadable images make it stop (counts, window, threshold, message)."""

import pytest

from un2clip.train.skips import SkipMonitor


def _monitor(max_rate=0.5, window=10, source_size=100):
    return SkipMonitor(max_rate=max_rate, window=window, source_size=source_size)


@pytest.mark.parametrize("max_rate, bad, stops", [
    (0.5, 5, False),  # at the threshold: not more than it
    (0.5, 6, True),
    (0.3, 3, False),
    (0.3, 4, True),
    (1.0, 9, False),  # 1: never by rate
])
def test_rate_at_and_around_the_threshold(max_rate, bad, stops):
    m = _monitor(max_rate=max_rate)
    verdict = m.record(10, bad)
    assert (verdict is not None) == stops
    if stops:
        assert verdict == (f"{bad} of the last 10 images drawn ({bad * 10}%) could not be read, "
                           f"more than --max-skip-rate {max_rate:g}")


def test_not_judged_before_the_window_is_full_then_judged_over_all_draws_in_it():
    m = _monitor(max_rate=0.5, window=10)
    assert m.record(4, 4) is None and m.record(4, 4) is None  # 8 drawn: fewer than the window
    assert m.window_counts == (8, 8)
    assert m.record(4, 0) == "8 of the last 12 images drawn (67%) could not be read, more than --max-skip-rate 0.5"


def test_old_draws_leave_the_window():
    m = _monitor(max_rate=0.5, window=8)
    assert m.record(4, 4) is None
    assert m.record(4, 0) is None  # 4 of 8: at the threshold
    assert m.record(4, 0) is None and m.window_counts == (8, 0)  # the bad draw left the window
    assert m.record(4, 4) is None and m.window_counts == (8, 4)
    assert m.record(4, 4) == "8 of the last 8 images drawn (100%) could not be read, more than --max-skip-rate 0.5"


def test_window_keeps_the_fewest_draws_that_cover_it():
    m = _monitor(max_rate=1.0, window=10)
    for _ in range(5):
        m.record(4, 1)
    assert m.window_counts == (12, 3)  # three draws of 4 cover 10; two would not


def test_a_whole_pass_without_a_readable_image_stops_whatever_the_rate():
    m = _monitor(max_rate=1.0, window=4, source_size=10)
    assert m.record(4, 4) is None and m.record(4, 4) is None  # 8 in a row: less than the source
    assert m.record(4, 3) is None and m.all_bad_run == 0  # one readable image resets the run
    assert m.record(4, 4) is None and m.record(4, 4) is None
    assert m.record(4, 4) == "none of the last 12 images drawn could be read"


def test_the_run_of_unreadable_images_is_judged_against_the_window_when_the_source_is_smaller():
    m = _monitor(max_rate=1.0, window=12, source_size=4)
    assert m.record(4, 4) is None and m.record(4, 4) is None
    assert m.record(4, 4) == "none of the last 12 images drawn could be read"


def test_final_verdict_judges_a_run_shorter_than_the_window():
    m = _monitor(max_rate=0.5, window=100)
    assert m.record(6, 3) is None and m.record(4, 2) is None
    assert m.final_verdict() is None  # 5 of 10
    m.record(2, 2)
    assert m.final_verdict() == "7 of the last 12 images drawn (58%) could not be read, more than --max-skip-rate 0.5"
    full = _monitor(max_rate=0.5, window=4)
    assert full.record(4, 2) is None and full.final_verdict() is None  # judged already when the window filled


def test_examples_are_the_newest_keys_each_once():
    m = _monitor()
    m.remember(["a", "b", "c"])
    m.remember(["d", "b", "e", "b"])  # only the 5 newest stay: c d b e b
    assert m.examples() == ["b", "e", "d", "c"]


def test_bad_counts_and_settings_are_refused():
    with pytest.raises(ValueError, match="cannot hold 5 unreadable"):
        _monitor().record(4, 5)
    with pytest.raises(ValueError, match="max_skip_rate must be in"):
        _monitor(max_rate=0)
    with pytest.raises(ValueError, match="skip_window must be >= 1"):
        _monitor(window=0)
