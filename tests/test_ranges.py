"""mediaproxy.ranges: Range and If-Range decided as RFC 9110 §14 and §13.1.5 say, exhaustively and by property."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaproxy.ranges import Partial, Unsatisfiable, Whole, decide, if_range_holds, partial_headers

SIZE = 1000
ETAG = '"abc123"'
MTIME = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
LAST_MODIFIED = email.utils.formatdate(MTIME, usegmt=True)


def whole_or_part(range_header, if_range=None, size=SIZE, etag=ETAG, last_modified=MTIME):
    return decide(range_header, if_range, size, etag, last_modified)


@pytest.mark.parametrize("header, expected", [
    # no Range, or one that is ignored: the whole representation
    (None, Whole()),
    ("", Whole()),
    ("items=0-5", Whole()),  # another unit
    ("bytes", Whole()),
    ("bytes=", Whole()),
    ("bytes=,", Whole()),
    ("bytes=-", Whole()),
    ("bytes=a-b", Whole()),
    ("bytes=5-1", Whole()),  # last before first: invalid
    ("bytes=0x10-20", Whole()),
    ("bytes=+1-2", Whole()),
    ("bytes=1.5-2", Whole()),
    ("bytes=1 - 2", Whole()),  # no whitespace inside a range-spec
    ("bytes =0-5", Whole()),  # nor around the "="
    ("bytes=0-5;q=1", Whole()),
    ("bytes=--5", Whole()),
    ("bytes=0--5", Whole()),
    ("by tes=0-5", Whole()),
    ("bytes=٣-5", Whole()),  # only ASCII digits
    ("bytes=0-0,5-9", Whole()),  # several ranges: our choice, the whole (RFC 9110 §14.2 allows ignoring Range)
    ("bytes=0-5, 0-5", Whole()),
    ("bytes=-1,0-0", Whole()),
    ("bytes=5000-,6000-", Whole()),  # several, even unsatisfiable ones: ignored, 200
    ("bytes=0-4,zz", Whole()),  # one bad spec makes the whole header invalid
    # one satisfiable range: inclusive, clamped to the size
    ("bytes=0-0", Partial(0, 0, SIZE)),
    ("bytes=0-499", Partial(0, 499, SIZE)),
    ("bytes=500-999", Partial(500, 999, SIZE)),
    ("bytes=500-", Partial(500, 999, SIZE)),
    ("bytes=999-", Partial(999, 999, SIZE)),
    ("bytes=0-", Partial(0, 999, SIZE)),
    ("bytes=990-5000", Partial(990, 999, SIZE)),
    ("bytes=0-99999999999999999999999999", Partial(0, 999, SIZE)),
    ("bytes=-1", Partial(999, 999, SIZE)),
    ("bytes=-500", Partial(500, 999, SIZE)),
    ("bytes=-1000", Partial(0, 999, SIZE)),
    ("bytes=-5000", Partial(0, 999, SIZE)),
    ("bytes=-99999999999999999999999999", Partial(0, 999, SIZE)),
    ("bytes=0005-0010", Partial(5, 10, SIZE)),
    ("Bytes=1-2", Partial(1, 2, SIZE)),  # the unit is case-insensitive
    ("BYTES=1-2", Partial(1, 2, SIZE)),
    ("  bytes=1-2  ", Partial(1, 2, SIZE)),
    ("bytes= 1-2", Partial(1, 2, SIZE)),  # OWS around list elements
    ("bytes=1-2 ,", Partial(1, 2, SIZE)),  # empty list elements are ignored
    ("bytes=,,1-2,,", Partial(1, 2, SIZE)),
    # not satisfiable: 416
    ("bytes=-0", Unsatisfiable(SIZE)),
    ("bytes=-000", Unsatisfiable(SIZE)),
    ("bytes=1000-", Unsatisfiable(SIZE)),
    ("bytes=1000-1000", Unsatisfiable(SIZE)),
    ("bytes=5000-6000", Unsatisfiable(SIZE)),
    ("bytes=99999999999999999999999999-", Unsatisfiable(SIZE)),
    ("bytes=" + "9" * 5000 + "-", Unsatisfiable(SIZE)),  # past int()'s 4300-digit limit
    ("bytes=" + "9" * 5000 + "-" + "9" * 4999, Whole()),  # last before first, compared exactly
    ("bytes=" + "9" * 5000 + "-" + "9" * 5000, Unsatisfiable(SIZE)),
], ids=repr)
def test_range_decisions(header, expected):
    assert whole_or_part(header) == expected
    assert whole_or_part(header).status == {Whole: 200, Partial: 206, Unsatisfiable: 416}[type(expected)]


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-", Unsatisfiable(0)),
    ("bytes=0-0", Unsatisfiable(0)),
    ("bytes=-0", Unsatisfiable(0)),
    ("bytes=-1", Whole()),  # satisfiable, but an empty representation has no byte for a 206
    ("bytes=-10", Whole()),
    ("items=0-1", Whole()),
])
def test_an_empty_representation(header, expected):
    assert whole_or_part(header, size=0) == expected


def test_a_one_byte_representation():
    assert whole_or_part("bytes=0-", size=1) == Partial(0, 0, 1)
    assert whole_or_part("bytes=-1", size=1) == Partial(0, 0, 1)
    assert whole_or_part("bytes=-2", size=1) == Partial(0, 0, 1)
    assert whole_or_part("bytes=1-", size=1) == Unsatisfiable(1)


def test_headers_of_a_206_and_a_416():
    part = whole_or_part("bytes=10-19")
    assert part.headers == partial_headers(part) == {"Content-Range": "bytes 10-19/1000", "Content-Length": "10"}
    assert part.length == 10
    assert whole_or_part("bytes=-1").headers == {"Content-Range": "bytes 999-999/1000", "Content-Length": "1"}
    assert whole_or_part("bytes=2000-").headers == {"Content-Range": "bytes */1000"}


def test_a_negative_size_is_a_caller_bug():
    with pytest.raises(ValueError):
        decide("bytes=0-1", None, -1, ETAG, MTIME)


# --------------------------------------------------------------------------------------------------- If-Range


@pytest.mark.parametrize("if_range, holds", [
    (ETAG, True),
    (f"  {ETAG} ", True),
    ('W/"abc123"', False),  # weak: never a strong match
    ('"abc124"', False),
    ('"ABC123"', False),  # opaque tags are compared byte for byte
    ('"abc123', False),  # malformed
    ('abc123', False),
    ('"abc"123"', False),
    ("*", False),
    ("", False),
    (LAST_MODIFIED, True),
    ("Sun, 06 Nov 1994 08:49:37 GMT", True),
    ("Sunday, 06-Nov-94 08:49:37 GMT", True),  # the obsolete RFC 850 form of the same date
    ("Sun Nov  6 08:49:37 1994", True),  # the asctime form (implicitly GMT)
    ("Sun, 06 Nov 1994 08:49:38 GMT", False),  # a second later: not exactly the Last-Modified
    ("Sun, 06 Nov 1994 08:49:36 GMT", False),  # nor earlier (If-Range is no If-Unmodified-Since)
    ("Sun, 06 Nov 1994 09:49:37 +0100", True),  # the same instant
    ("yesterday", False),
    ("Sun, 06 Nov 1994 25:49:37 GMT", False),
    ("Sun, 99 Nov 1994 08:49:37 GMT", False),
])
def test_if_range(if_range, holds):
    assert if_range_holds(if_range, ETAG, MTIME) is holds
    expected = Partial(0, 9, SIZE) if holds else Whole()
    assert whole_or_part("bytes=0-9", if_range) == expected


def test_if_range_against_a_representation_without_that_validator():
    assert whole_or_part("bytes=0-9", ETAG, etag=None) == Whole()
    assert whole_or_part("bytes=0-9", LAST_MODIFIED, last_modified=None) == Whole()
    assert whole_or_part("bytes=0-9", 'W/"abc123"', etag='W/"abc123"') == Whole()  # weak on both sides
    assert whole_or_part("bytes=0-9", LAST_MODIFIED, etag=None) == Partial(0, 9, SIZE)


def test_a_fractional_mtime_matches_the_second_its_header_shows():
    assert if_range_holds(LAST_MODIFIED, None, MTIME + 0.75)


def test_if_range_does_not_turn_a_416_into_a_206_but_a_false_one_sends_the_whole():
    assert whole_or_part("bytes=5000-", ETAG) == Unsatisfiable(SIZE)
    assert whole_or_part("bytes=5000-", '"old"') == Whole()  # the client's copy is stale: send it all


def test_if_range_without_range_is_ignored():
    assert whole_or_part(None, '"old"') == Whole()
    assert whole_or_part(None, ETAG) == Whole()


def test_if_range_with_an_ignored_range_is_whole():
    assert whole_or_part("items=0-1", ETAG) == Whole()
    assert whole_or_part("bytes=0-1,3-4", ETAG) == Whole()


# -------------------------------------------------------------------------------------------------- properties

digits = st.one_of(st.integers(0, 3000).map(str), st.integers(0, 10**30).map(str),
                   st.tuples(st.integers(0, 3), st.integers(0, 2000)).map(lambda t: "0" * t[0] + str(t[1])))
specs = st.one_of(
    st.tuples(digits, st.just("-"), st.one_of(st.just(""), digits)).map("".join),
    digits.map(lambda d: "-" + d),
    st.text("0123456789-,= \tabytesBYTES", max_size=12),
)
headers = st.one_of(
    st.lists(specs, min_size=1, max_size=3).map(lambda items: "bytes=" + ",".join(items)),
    st.tuples(st.sampled_from(["bytes", "Bytes", "items", "none", ""]), st.sampled_from(["=", ""]), specs)
    .map("".join),
    st.text(max_size=20),
)


@settings(max_examples=600, deadline=None)
@given(header=headers, size=st.integers(0, 5000))
def test_any_range_header_gives_a_consistent_decision(header, size):
    decision = decide(header, None, size, ETAG, MTIME)
    assert isinstance(decision, (Whole, Partial, Unsatisfiable))
    if isinstance(decision, Partial):
        assert 0 <= decision.start <= decision.end < size
        assert decision.size == size and decision.length == decision.end - decision.start + 1
        start, _, end = decision.headers["Content-Range"].removeprefix("bytes ").partition("/")[0].partition("-")
        assert (int(start), int(end)) == (decision.start, decision.end)
        assert int(decision.headers["Content-Length"]) == decision.length
    elif isinstance(decision, Unsatisfiable):
        assert decision.headers == {"Content-Range": f"bytes */{size}"}
    # a false If-Range always means the whole; a true one changes nothing
    assert decide(header, '"other"', size, ETAG, MTIME) == Whole()
    assert decide(header, ETAG, size, ETAG, MTIME) == decision


@settings(max_examples=600, deadline=None)
@given(size=st.integers(1, 3000), first=st.integers(0, 4000), last=st.one_of(st.none(), st.integers(0, 4000)))
def test_an_int_range_selects_exactly_the_bytes_it_names(size, first, last):
    """Against a model: the requested positions that exist, as a set of byte offsets."""
    header = f"bytes={first}-{'' if last is None else last}"
    decision = decide(header, None, size, ETAG, MTIME)
    if last is not None and last < first:
        assert decision == Whole()
        return
    wanted = set(range(first, (size - 1 if last is None else last) + 1)) & set(range(size))
    if not wanted:
        assert decision == Unsatisfiable(size)
    else:
        assert decision == Partial(min(wanted), max(wanted), size)


@settings(max_examples=400, deadline=None)
@given(size=st.integers(0, 3000), length=st.integers(0, 5000))
def test_a_suffix_range_selects_the_last_bytes(size, length):
    decision = decide(f"bytes=-{length}", None, size, ETAG, MTIME)
    if length == 0:
        assert decision == Unsatisfiable(size)
    elif size == 0:
        assert decision == Whole()
    else:
        assert decision == Partial(max(0, size - length), size - 1, size)
