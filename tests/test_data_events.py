"""Event text format, dense-annotation checks and stage-1 masked samples."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tempura_jax.data.events import (
    PROMPTS,
    Event,
    event_problems,
    format_events,
    mask_frame_range,
    masked_sample,
    parse_events,
)
from tempura_jax.data.sample import masked_frames

EVENTS = [
    Event(0.0, 4.5, "A red circle appears."),
    Event(4.5, 9.0, "It moves left."),
    Event(9.0, 12.0, "It disappears."),
]


def test_format_parse_round_trip():
    text = format_events(EVENTS)
    assert text.split("\n\n")[1] == "From 4.5 to 9.0 seconds, It moves left."
    assert parse_events(text) == EVENTS
    # One line, integral seconds, a colon, "second": still parsed.
    assert parse_events("From 1 to 2 second: a. From 2 to 3 seconds, b") == [
        Event(1, 2, "a."),
        Event(2, 3, "b"),
    ]


def test_problems():
    assert event_problems(EVENTS, 12.0) == []
    assert event_problems(EVENTS, 12.5, tol=1.0) == []  # within tolerance
    overlap = [EVENTS[0], Event(3.0, 9.0, "x"), EVENTS[2]]
    assert "before event 0 ends" in event_problems(overlap, 12.0)[0]
    gap = [EVENTS[0], Event(7.0, 9.0, "x"), EVENTS[2]]
    assert "gap" in event_problems(gap, 12.0)[0]
    assert any("after the video" in p for p in event_problems(EVENTS, 8.0))
    assert any("video at" in p for p in event_problems(EVENTS, 30.0))
    assert any(
        "before it starts" in p for p in event_problems([Event(3, 1, "x")], None, cover=False)
    )
    assert event_problems([], 5.0) == ["no events"]
    assert any("not at 0" in p for p in event_problems([Event(5, 12, "x")], 12.0))


def test_masked_sample_and_frames():
    prompt, answer, window = masked_sample(EVENTS, 1)
    assert prompt.startswith("Given the input video with the masked segment from 4.5 to 9.0, \n")
    assert "predicted event from 4.5 to 9.0 is: <predicted" in prompt
    project = masked_sample(EVENTS, 1, prompt=PROMPTS["project"]["masked"])[0]
    assert "from 4.5 to 9.0 seconds is masked" in project
    assert answer.startswith("<think>") and "</think><answer>So the description" in answer
    assert answer.endswith("from 4.5 to 9.0 is: It moves left.</answer>")
    assert window == [[5, 8]]  # frames at 5..8 s lie inside [4.5, 9.0)
    assert mask_frame_range(Event(4.0, 9.0, "x")) == (4, 8)
    times = np.arange(12.0)
    np.testing.assert_array_equal(np.nonzero(masked_frames(times, window, 1.0))[0], [5, 6, 7, 8])
    # At 2 FPS sampling the same window blanks every frame in [5, 9) seconds.
    t2 = np.arange(24) / 2
    assert t2[masked_frames(t2, window, 1.0)].tolist() == [5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises(text):
    events = parse_events(text)
    assert all(isinstance(e, Event) for e in events)
    event_problems(events, 10.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.text(min_size=1)), max_size=5))
def test_parse_finds_every_formatted_event(items):
    events = [Event(round(a, 1), round(b, 1), "x " + c.replace("From", "")) for a, b, c in items]
    parsed = parse_events(format_events(events))
    assert [(e.start, e.end) for e in parsed] == [(e.start, e.end) for e in events]
