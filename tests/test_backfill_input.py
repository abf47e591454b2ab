"""Reading JSON Lines input: ranges split at line starts cover every line exactly once."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segops_fast.backfill._input import MAX_LINE_BYTES, InputRange, RangeReader, plan_ranges


def read_all(input_range: InputRange, start: int | None = None) -> list[tuple[bytes, int, bool]]:
    reader = RangeReader(input_range, input_range.start if start is None else start)
    try:
        return list(reader.lines())
    finally:
        reader.close()


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=60),
    final_newline=st.booleans(),
    parts=st.integers(min_value=1, max_value=5),
)
def test_ranges_cover_every_line_once_and_positions_are_exact(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], final_newline: bool, parts: int
) -> None:
    path = tmp_path_factory.mktemp("input") / "events.jsonl"
    content = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.write_bytes(content)
    expected = content.split(b"\n")
    if expected[-1] == b"":  # after a final newline, or in an empty file
        expected.pop()
    ranges = plan_ranges([str(path)], parts)
    seen = [item for input_range in ranges for item in read_all(input_range)]
    assert [line for line, _, _ in seen] == expected
    for line, end, _ in seen:
        # The position just after the line's newline (or the end of the file).
        newline = int(content[end - 1 : end] == b"\n")
        assert content[end - len(line) - newline : end - newline] == line
    # Resuming from any line's end reads exactly the rest of that range.
    for index, (_, end, _) in enumerate(seen[:-1]):
        owner = next(r for r in ranges if r.start <= end and (r.end is None or end < r.end))
        rest = [
            line
            for line, line_end, _ in seen[index + 1 :]
            if owner.end is None or line_end <= owner.end
        ]
        assert [line for line, _, _ in read_all(owner, end)] == rest


def test_a_line_longer_than_the_limit_is_cut_and_the_next_line_is_read(tmp_path: Path) -> None:
    long_line = b"x" * (MAX_LINE_BYTES * 2 + 10)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"first\n" + long_line + b"\nlast\n")
    seen = read_all(InputRange(str(path), 0, None))
    assert [(len(line), end, too_long) for line, end, too_long in seen] == [
        (5, 6, False),
        (MAX_LINE_BYTES, 6 + len(long_line) + 1, True),
        (4, path.stat().st_size, False),
    ]


def test_gzip_input_is_read_whole_and_resumes_from_an_uncompressed_position(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wb") as file:
        file.write(b"a\nbb\nccc\n")
    (whole,) = plan_ranges([str(path)], 4)
    assert whole == InputRange(str(path), 0, None)
    assert [line for line, _, _ in read_all(whole)] == [b"a", b"bb", b"ccc"]
    assert read_all(whole, 5) == [(b"ccc", 9, False)]


def test_ranges_for_a_cluster_are_at_most_max_range_bytes_and_cover_each_file(
    tmp_path: Path,
) -> None:
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_bytes(b"".join(b"%08d\n" % n for n in range(10_000)))  # 90,000 bytes
    small.write_bytes(b"".join(b"%08d\n" % n for n in range(100)))  # 900 bytes
    ranges = plan_ranges([str(big), str(small)], 2, max_range_bytes=10_000)
    on_big = [r for r in ranges if r.path == str(big)]
    on_small = [r for r in ranges if r.path == str(small)]
    # The big file in 9 ranges of about 10,000 bytes (cut at line starts, 9 bytes apart);
    # the small one in the 2 asked for.
    assert len(on_big) == 9
    assert all(abs((r.end or 0) - r.start - 10_000) < 9 for r in on_big)
    assert [(r.start, r.end) for r in on_small] == [(0, 450), (450, 900)]
    lines = [line for part in ranges for line, _, _ in read_all(part)]
    assert lines == [b"%08d" % n for n in range(10_000)] + [b"%08d" % n for n in range(100)]
