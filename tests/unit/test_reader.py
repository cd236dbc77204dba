"""The event reader: protocol lines among foreign output, behind any prefix, CRLF, lines split in two."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmtest.events.protocol import Event, format_event, parse_line
from vmtest.events.reader import EventReader, open_capture

GOLDEN = Path(__file__).resolve().parents[2] / "drivers" / "event-golden.txt"
ACQUIRED = "VMTEST1 seq=5 ev=acquired sc=kmutex_contention t=0 m=counter k=kmutex irql=0 depth=1"
RELEASE = "VMTEST1 seq=6 ev=release sc=kmutex_contention t=0 m=counter k=kmutex irql=0 depth=1"


def read(lines: list[str], *, tail: int = 8, max_parts: int = 3) -> tuple[list[Event], EventReader]:
    reader = EventReader(tail=tail, max_parts=max_parts)
    return list(reader.read(lines)), reader


def test_golden_lines_read_as_the_parser_reads_them() -> None:
    lines = GOLDEN.read_text().splitlines(keepends=True)
    events, reader = read(lines)
    expected = [parse_line(line, number) for number, line in enumerate(lines, 1)]
    assert events == [event for event in expected if event is not None]
    assert len(events) == 18 and not reader.problems


def test_wrapped_golden_lines_carry_the_fields_of_their_canonical_line() -> None:
    events, _ = read(GOLDEN.read_text().splitlines())
    canonical = {event.seq: event for event in events if event.line.startswith("VMTEST1 ")}
    wrapped = [event for event in events if not event.line.startswith("VMTEST1 ")]
    assert len(wrapped) == 5
    for event in wrapped:
        assert (event.ev, dict(event.fields), event.msg) == (
            canonical[event.seq].ev,
            dict(canonical[event.seq].fields),
            canonical[event.seq].msg,
        )


@pytest.mark.parametrize(
    "prefix",
    ["", "[   12.345678] ", "00000004\t0.00104230\t", "2026-11-24T00:00:01.123456Z console ", "kd> "],
)
@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_prefixes_and_line_endings(prefix: str, ending: str) -> None:
    (event,), reader = read([f"{prefix}{ACQUIRED}{ending}"])
    assert event.seq == 5 and event.fields["depth"] == "1" and event.line == prefix + ACQUIRED
    assert not reader.problems


def test_csv_quotes_belong_to_the_capture_not_the_event() -> None:
    events, reader = read([f'5,"0.00110000","{ACQUIRED}"\r\n', f'6,"0.00120000","{RELEASE}"'])
    assert [event.fields["depth"] for event in events] == ["1", "1"] and not reader.problems
    # the same body unquoted, ending in a stray quote, is judged on its own terms: malformed
    events, reader = read([f'5,"0.1","{ACQUIRED}"', ACQUIRED + '"'])
    assert [event.seq for event in events] == [5]
    assert [problem.lineno for problem in reader.problems] == [2]


def test_foreign_lines_are_passed_on_and_do_not_disturb() -> None:
    seen: list[tuple[str, int]] = []
    lines = ["Linux version 6.1.0", ACQUIRED, "\x1b[31mred\x1b[0m kernel text", RELEASE, ""]
    events, reader = read_with(lines, seen)
    assert [event.seq for event in events] == [5, 6]
    assert seen == [("Linux version 6.1.0", 1), ("\x1b[31mred\x1b[0m kernel text", 3), ("", 5)]
    assert not reader.problems


def read_with(lines: list[str], seen: list[tuple[str, int]]) -> tuple[list[Event], EventReader]:
    reader = EventReader(on_other_line=lambda text, number: seen.append((text, number)))
    return list(reader.read(lines)), reader


def test_a_line_split_inside_a_value_is_rejoined() -> None:
    at = ACQUIRED.index("m=counter") + 4
    events, reader = read([ACQUIRED[:at] + "\r\n", ACQUIRED[at:] + "\r\n", RELEASE])
    assert [(event.line, event.lineno) for event in events] == [(ACQUIRED, 1), (RELEASE, 3)]
    assert not reader.problems


def test_splits_at_every_position_are_rejoined() -> None:
    prefix = "[   3.1] "
    line = prefix + ACQUIRED
    for at in range(1, len(line)):
        events, reader = read([line[:at], line[at:], RELEASE])
        assert [event.seq for event in events] == [5, 6], at
        # a first part that is already a complete event is not joined: the optional depth is lost
        complete = line[:at].rstrip().endswith("irql=0")
        assert events[0].fields.get("depth") == (None if complete else "1"), at
        # split inside the capture's own prefix, the protocol line stands whole on the second line
        assert events[0].lineno == (1 if at > len(prefix) else 2), at
        assert not reader.problems, at


def test_a_split_between_fields_whose_space_was_lost_is_rejoined() -> None:
    at = ACQUIRED.index(" k=")
    (event, _), _ = read([ACQUIRED[:at], ACQUIRED[at + 1 :], RELEASE])
    assert event.fields["k"] == "kmutex" and event.fields["m"] == "counter"


def test_a_line_in_three_parts_with_a_blank_line_between_is_rejoined() -> None:
    a, b = ACQUIRED.index("ev=") + 5, ACQUIRED.index(" irql")
    events, reader = read([ACQUIRED[:a], "", ACQUIRED[a:b], ACQUIRED[b:], RELEASE])
    assert [event.seq for event in events] == [5, 6] and not reader.problems


def test_lookahead_is_bounded() -> None:
    parts = [ACQUIRED[:30], ACQUIRED[30:50], ACQUIRED[50:70], ACQUIRED[70:]]
    events, reader = read([*parts, RELEASE], max_parts=3)
    assert [event.seq for event in events] == [6]
    assert [(problem.kind, problem.lineno) for problem in reader.problems] == [("incomplete", 1)]
    events, reader = read([*parts, RELEASE], max_parts=4)
    assert [event.seq for event in events] == [5, 6] and not reader.problems


def test_a_continuation_with_a_capture_prefix_of_its_own_is_not_joined() -> None:
    at = ACQUIRED.index(" irql")
    seen: list[tuple[str, int]] = []
    events, reader = read_with([ACQUIRED[:at], "[   12.5] " + ACQUIRED[at:]], seen)
    assert events == []
    assert [(problem.kind, problem.lineno, problem.seq) for problem in reader.problems] == [
        ("incomplete", 1, 5)
    ]
    assert seen == [("[   12.5] " + ACQUIRED[at:], 2)]


def test_a_foreign_line_after_a_truncated_one_is_not_swallowed() -> None:
    seen: list[tuple[str, int]] = []
    truncated = ACQUIRED[: ACQUIRED.index(" irql")]
    events, reader = read_with([truncated, "e1000: eth0 NIC Link is Up", RELEASE], seen)
    assert [event.seq for event in events] == [6]
    assert [problem.message for problem in reader.problems] == ["ev=acquired without irql"]
    assert seen == [("e1000: eth0 NIC Link is Up", 2)]


def test_a_foreign_line_ending_like_the_prefix_is_released_unchanged() -> None:
    seen: list[tuple[str, int]] = []
    events, _ = read_with(["voltage 5V", RELEASE, "at the end: VM"], seen)
    assert [event.seq for event in events] == [6]
    assert seen == [("voltage 5V", 1), ("at the end: VM", 3)]


def test_malformed_lines_are_problems_never_exceptions() -> None:
    lines = [
        "VMTEST1 seq=x ev=acquired",
        "VMTEST1 msg=no seq",
        "VMTEST1 seq=7 ev=acquired sc=a sc=b t=0 m=c k=kmutex irql=0",
        "VMTEST1 seq=8 ev=heartbeat up=1",
        RELEASE,
    ]
    events, reader = read(lines)
    assert [(event.seq, event.ev) for event in events] == [(8, "heartbeat"), (6, "release")]
    assert [(problem.lineno, problem.kind) for problem in reader.problems] == [
        (1, "malformed"),
        (2, "malformed"),
        (3, "malformed"),
        (4, "unknown-event"),
    ]
    assert reader.problem_seqs == {7}
    assert "given twice" in reader.problems[2].message and "VMTEST1" not in reader.problems[2].message


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from('VMTEST1 seq=ev,:_-\t\r"[]05az'), max_size=60), max_size=12))
def test_any_text_is_read_without_exceptions(lines: list[str]) -> None:
    reader = EventReader()
    for event in reader.read(lines):
        assert event.line
    assert reader.lineno == len(lines)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), max_size=40), st.integers(0, 3))
def test_feed_line_by_line_equals_read(cuts: list[int], seed: int) -> None:
    text = "\n".join(
        [
            "Linux version 6.1.0",
            ACQUIRED[: cuts[0] % len(ACQUIRED)] if cuts else ACQUIRED,
            ACQUIRED[cuts[0] % len(ACQUIRED) :] if cuts else "",
            RELEASE,
            "VMTEST1 seq=7 ev=bogus",
            "voltage 5V",
        ][seed:]
    )
    lines = text.split("\n")
    batch = list(EventReader().read(lines))
    reader = EventReader()
    fed = [event for line in lines for event in reader.feed(line)] + reader.close()
    assert fed == batch


def test_tails_keep_the_last_lines_of_each_scenario_including_foreign_ones() -> None:
    lines = [
        "VMTEST1 seq=1 ev=scenario-start sc=a params=-",
        *[f"VMTEST1 seq={n} ev=call sc=a t=0 op=new m=x k=kmutex irql=0 r=Ok" for n in range(2, 20)],
        "foreign while a runs",
        "VMTEST1 seq=20 ev=scenario-end sc=a outcome=done",
        "foreign after a",
    ]
    _, reader = read(lines, tail=3)
    assert [number for number, _ in reader.tails()["a"]] == [19, 20, 21]
    assert reader.tails()["a"][1] == (20, "foreign while a runs")


def test_the_parse_cache_gives_each_event_its_own_seq_and_line() -> None:
    lines = [f"[{n}] VMTEST1 seq={n} ev=call sc=a t=0 op=lock m=x k=kmutex irql=0 r=Ok" for n in range(1, 50)]
    events, _ = read(lines)
    assert [event.seq for event in events] == list(range(1, 50))
    assert all(event == parse_line(event.line, event.lineno) for event in events)
    assert format_event(events[3]) == "VMTEST1 seq=4 ev=call sc=a t=0 op=lock m=x k=kmutex irql=0 r=Ok"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_open_capture_reads_utf8_and_utf16(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "capture.log"
    path.write_bytes(f"DebugView\r\n{ACQUIRED}\r\n".encode(encoding))
    with open_capture(path) as capture:
        events, _ = read(list(capture))
    assert [event.seq for event in events] == [5]


def test_open_capture_replaces_bad_bytes_and_keeps_stray_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "capture.log"
    path.write_bytes(b"\xfa\xfb junk\rmore\n" + ACQUIRED.encode() + b"\n")
    with open_capture(path) as capture:
        lines = list(capture)
    assert len(lines) == 2 and "\r" in lines[0]
    events, _ = read(lines)
    assert [event.seq for event in events] == [5]
