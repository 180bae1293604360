"""Mutation fuzzing of originals: every generated medium, mutated (bit flips, truncations, box/chunk/segment sizes
that lie, counts and dimensions that overflow, bytes inserted, deleted or repeated), served by thumbnail,
flvclipper and raw of one real server on loopback.

What must hold for every case (SPEC §6): no 5xx but a 503/504 in SPEC form; no answer later than
`request_seconds` (+ slack for two shared cores); the serving process (here the test process, which serves in
its event loop and work threads) grows by less than RSS_GROWTH_BOUND over its size when the server started; after
each batch `/healthz` answers at once and every job has left the work pool (nothing hangs in a thread).

    MEDIAPROXY_FUZZ_CASES=5000 .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/test_fuzz_originals.py

runs thousands (default: 300 in all, a few seconds); `-s` shows the figures (cases, requests, worst time, worst
RSS). A failing case names its medium, number and mutations, and is rebuilt from those alone (seeded).
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from fixtures.generate import (alpha_png, animated_gif, photo_like_jpeg, photo_like_still, photo_like_webp,
                               write_audio, write_video)
from mediaproxy.app import RUNTIME

from .conftest import make_config, make_entry, until
from .test_hostile import Answer, ask, assert_answer

# Pillow warns about every corrupt tag it skips: that is what these files are made of
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOTAL_CASES = int(os.environ.get("MEDIAPROXY_FUZZ_CASES", "300"))
REQUEST_SECONDS = 2.0
SLACK_SECONDS = 1.0  # scheduling on two shared cores, and the answer's own transfer
RSS_GROWTH_BOUND = 384 * 2**20  # the serving process, over its size before the first case
BATCH = 20  # cases between health checks
CONCURRENCY = 4  # requests in flight at once
MAX_OUTPUT_PIXELS = 200_000
FUZZ_LIMITS = f"""
[limits]
max_source_pixels = 4000000
max_output_pixels = {MAX_OUTPUT_PIXELS}
request_seconds = {REQUEST_SECONDS}

[processing]
threads = 2
queue_timeout_seconds = {REQUEST_SECONDS}
"""

THUMBNAIL_STATUSES = {200, 400, 413, 422, 503, 504}
CLIP_STATUSES = {200, 400, 413, 422, 503, 504}
RAW_STATUSES = {200, 206, 413, 416, 503, 504}


# ------------------------------------------------------------------------------------------------- the seeds

@dataclass(frozen=True)
class Seed:
    name: str
    extension: str
    kind: str  # image, video or audio: which services to ask
    structure: str  # how to find its size and count fields: jpeg, png, gif, webp, tiff, isobmff, flv


def _video(suffix: str, **options) -> Callable[[Path], bytes]:
    def make(folder: Path) -> bytes:
        path = folder / f"seed{suffix}"
        write_video(path, seconds=1, fps=5, width=64, height=48, **options)
        return path.read_bytes()
    return make


def _audio(folder: Path) -> bytes:
    path = folder / "seed.m4a"
    write_audio(path, seconds=1)
    return path.read_bytes()


SEEDS: dict[Seed, Callable[[Path], bytes]] = {
    Seed("jpeg", "jpg", "image", "jpeg"): lambda _: photo_like_jpeg(96, 64, seed=11, exif_orientation=6),
    Seed("progressive_jpeg", "jpg", "image", "jpeg"):
        lambda _: photo_like_still("JPEG", 96, 64, seed=12, progressive=True, quality=80),
    Seed("png", "png", "image", "png"): lambda _: alpha_png(64, 48),
    Seed("gif", "gif", "image", "gif"): lambda _: animated_gif(48, 32, frames=3),
    Seed("webp", "webp", "image", "webp"): lambda _: photo_like_webp(64, 48, seed=13),
    Seed("avif", "avif", "image", "isobmff"): lambda _: photo_like_still("AVIF", 64, 48, seed=14, quality=50, speed=10),
    Seed("tiff", "tif", "image", "tiff"): lambda _: photo_like_still("TIFF", 64, 48, seed=15, compression="tiff_lzw"),
    Seed("mp4", "mp4", "video", "isobmff"): _video(".mp4", keyframe_interval=2, bframes=2),
    Seed("flv", "flv", "video", "flv"): _video(".flv", keyframe_interval=2),
    Seed("m4a", "m4a", "audio", "isobmff"): _audio,
}


# ---------------------------------------------------------------------------------- where the numbers live

@dataclass(frozen=True)
class Number:
    """An integer field of the file: a size, a count, a dimension or an offset."""

    offset: int
    width: int  # bytes
    little: bool = False


def numbers(structure: str, data: bytes) -> list[Number]:
    try:
        return _NUMBERS[structure](data)
    except (IndexError, struct.error, ValueError):
        return []


def _jpeg_numbers(data: bytes) -> list[Number]:
    found, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2:at + 4], "big")
        found.append(Number(at + 2, 2))
        if marker in (0xC0, 0xC1, 0xC2):  # SOF: precision, height, width, components
            found += [Number(at + 5, 2), Number(at + 7, 2), Number(at + 9, 1)]
        elif marker == 0xDA:  # SOS: component count; entropy-coded data follows
            found.append(Number(at + 4, 1))
            break
        at += 2 + length
    return found


def _png_numbers(data: bytes) -> list[Number]:
    found, at = [], 8
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        found.append(Number(at, 4))
        if data[at + 4:at + 8] == b"IHDR":
            found += [Number(at + 8, 4), Number(at + 12, 4), Number(at + 16, 1), Number(at + 17, 1)]
        elif data[at + 4:at + 8] in (b"acTL", b"fcTL"):
            found += [Number(at + 8, 4), Number(at + 12, 4)]
        at += 12 + length
    return found


def _gif_numbers(data: bytes) -> list[Number]:
    found = [Number(6, 2, True), Number(8, 2, True), Number(10, 1)]
    at = data.find(b"\x2c", 13)
    while 0 < at < len(data) - 10:  # image descriptors (and bytes that look like one: a fuzzer does not mind)
        found += [Number(at + 1 + 2 * index, 2, True) for index in range(4)] + [Number(at + 10, 1)]
        at = data.find(b"\x2c", at + 10)
    return found[:40]


def _webp_numbers(data: bytes) -> list[Number]:
    found, at = [Number(4, 4, True)], 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "little")
        found.append(Number(at + 4, 4, True))
        if data[at:at + 4] == b"VP8X":
            found += [Number(at + 12, 3, True), Number(at + 15, 3, True)]
        elif data[at:at + 4] == b"VP8 ":
            found += [Number(at + 14, 2, True), Number(at + 16, 2, True)]
        at += 8 + size + (size & 1)
    return found


def _tiff_numbers(data: bytes) -> list[Number]:
    little = data[:2] == b"II"
    order = "little" if little else "big"
    first = int.from_bytes(data[4:8], order)
    found, at = [Number(4, 4, little), Number(first, 2, little)], first + 2
    for _ in range(int.from_bytes(data[first:first + 2], order)):
        found += [Number(at + 4, 4, little), Number(at + 8, 4, little)]  # count, value or offset
        at += 12
    return found


_ISOBMFF_CONTAINERS = {b"moov": 8, b"trak": 8, b"mdia": 8, b"minf": 8, b"stbl": 8, b"dinf": 8, b"edts": 8,
                       b"udta": 8, b"mvex": 8, b"iprp": 8, b"ipco": 8, b"meta": 12, b"stsd": 16, b"iinf": 14,
                       b"avc1": 86, b"av01": 86, b"mp4a": 36}
_ISOBMFF_COUNTS = {b"stts": [12], b"stss": [12], b"stsc": [12], b"stco": [12], b"co64": [12], b"ctts": [12],
                   b"elst": [12, 16, 20], b"stsz": [12, 16], b"dref": [12], b"mvhd": [20, 24], b"mdhd": [20, 24],
                   b"ispe": [12, 16], b"iloc": [12, 14, 16], b"pitm": [12], b"tkhd": [-8, -4]}


def _isobmff_numbers(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[Number]:
    found, at, end = [], start, len(data) if end is None else end
    while at + 8 <= end and depth < 8:
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if size < 8:
            break
        found.append(Number(at, 4))
        found += [Number(at + offset if offset > 0 else at + size + offset, 4)
                  for offset in _ISOBMFF_COUNTS.get(kind, [])]
        if kind in (b"avc1", b"av01"):
            found += [Number(at + 32, 2), Number(at + 34, 2)]
        if kind in _ISOBMFF_CONTAINERS:
            found += _isobmff_numbers(data, at + _ISOBMFF_CONTAINERS[kind], min(at + size, end), depth + 1)
        at += size
    return found


def _flv_numbers(data: bytes) -> list[Number]:
    found, at = [Number(5, 4)], 13
    while at + 11 <= len(data) and len(found) < 200:
        size = int.from_bytes(data[at + 1:at + 4], "big")
        found += [Number(at + 1, 3), Number(at + 4, 3)]  # data size, timestamp
        if data[at] == 9 and at + 16 < len(data) and data[at + 12] == 0:  # AVC sequence header: avcC fields
            found += [Number(at + 16 + 6, 2), Number(at + 16 + 5, 1)]
        at += 11 + size
        found.append(Number(at, 4))  # previous tag size
        at += 4
    return found


_NUMBERS: dict[str, Callable[[bytes], list[Number]]] = {
    "jpeg": _jpeg_numbers, "png": _png_numbers, "gif": _gif_numbers, "webp": _webp_numbers, "tiff": _tiff_numbers,
    "isobmff": _isobmff_numbers, "flv": _flv_numbers,
}


# ----------------------------------------------------------------------------------------------- mutations

def _lie(rng: random.Random, number: Number, data: bytearray) -> str:
    top = (1 << (8 * number.width)) - 1
    order = "little" if number.little else "big"
    old = int.from_bytes(data[number.offset:number.offset + number.width], order)
    value = rng.choice([0, 1, 2, 7, 8, 0x7F, top, top - 1, top // 2, top // 2 + 1, old + 1, max(old - 1, 0),
                        old * 2, old + len(data), rng.randint(0, top)]) & top
    data[number.offset:number.offset + number.width] = value.to_bytes(number.width, order)
    return f"@{number.offset}:{old}->{value}"


def _fix_png_crcs(data: bytearray) -> None:
    """Recompute every PNG chunk CRC that the (possibly lying) lengths still frame, so decoders read on."""
    at = 8
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        if at + 12 + length > len(data):
            return
        data[at + 8 + length:at + 12 + length] = struct.pack(">I", zlib.crc32(data[at + 4:at + 8 + length]))
        at += 12 + length


def mutate(seed: Seed, original: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    data, done = bytearray(original), []
    near_start = rng.choice([64, 512, 4096, len(data)])  # most structure sits near the start
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        header = max(1, min(len(data), near_start))
        fields = [number for number in numbers(seed.structure, bytes(data))
                  if number.offset + number.width <= len(data)]
        kind = rng.choice(["lie", "lie", "lie", "flip", "flip", "bytes", "truncate", "insert", "delete", "repeat"])
        if kind == "lie" and fields:
            done.append("lie" + _lie(rng, rng.choice(fields), data))
        elif kind in ("flip", "lie"):
            for _ in range(rng.choice([1, 2, 4, 16])):
                bit = rng.randrange(8 * (header if rng.random() < 0.7 else len(data)))
                data[bit // 8] ^= 1 << (bit % 8)
            done.append("flip")
        elif kind == "bytes":
            at, count = rng.randrange(len(data)), rng.choice([1, 2, 4, 16])
            data[at:at + count] = bytes([rng.choice([0, 0xFF, rng.randrange(256)])] * count)
            done.append(f"bytes@{at}x{count}")
        elif kind == "truncate":
            at = rng.randrange(header if rng.random() < 0.5 else len(data))
            del data[at:]
            done.append(f"truncate@{at}")
        elif kind == "insert":
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.choice([1, 3, 8, 100]))
            done.append(f"insert@{at}")
        elif kind == "delete":
            at = rng.randrange(len(data))
            del data[at:at + rng.choice([1, 3, 8, 100])]
            done.append(f"delete@{at}")
        else:
            at = rng.randrange(len(data))
            piece = data[at:at + rng.choice([8, 64, 512])]
            data[at:at] = piece * rng.choice([2, 10, 100])
            done.append(f"repeat@{at}")
        if not data:
            data = bytearray(original[:1])
    if seed.structure == "png" and rng.random() < 0.5:
        _fix_png_crcs(data)
        done.append("crc")
    return bytes(data), done


# ---------------------------------------------------------------------------------------------- requests

def requests_for(seed: Seed, rng: random.Random) -> list[tuple[str, dict[str, str], set[int]]]:
    """(path after /p/100/, headers, allowed statuses) for one case."""
    thumbnail = f"thumbnail/width/{rng.choice([0, 1, 16, 64, 120, 400])}/type/{rng.choice([1, 2, 3, 5])}"
    if seed.kind == "video":
        thumbnail += rng.choice(["", "/vid_sec/0", "/vid_sec/0.5", "/vid_sec/99", "/vid_slices/3",
                                 "/vid_slices/2/vid_slice/1"])
    thumbnail += rng.choice(["", "", "/format/png", "/format/webp", "/quality/30"])
    asked = [(thumbnail, {}, THUMBNAIL_STATUSES)]
    if seed.kind in ("video", "audio"):
        asked.append((f"flvclipper/clip_from/{rng.choice([0, 0, 200, 600])}"
                      + rng.choice(["", "/clip_to/400", "/clip_to/900"]), {}, CLIP_STATUSES))
    headers = rng.choice([{}, {}, {"Range": "bytes=0-99"}, {"Range": "bytes=-10"}, {"Range": "bytes=100000-"}])
    asked.append(("raw", headers, RAW_STATUSES))
    return asked


@dataclass
class Figures:
    cases: int = 0
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    worst_seconds: float = 0.0
    worst_request: str = ""
    worst_rss: int = 0
    worst_growth: int = 0


FIGURES = Figures()


def resident_bytes(pid: str | int = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0  # a process that just ended


def cases_per_seed() -> int:
    return max(1, TOTAL_CASES // len(SEEDS))


@pytest.fixture(scope="module")
def seed_bytes(tmp_path_factory) -> dict[Seed, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    return {seed: make(folder) for seed, make in SEEDS.items()}


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    figures = FIGURES
    print(f"\nfuzzed originals: {figures.cases} cases, {figures.requests} requests, statuses "
          f"{dict(sorted(figures.statuses.items()))}; worst answer {figures.worst_seconds:.2f} s "
          f"({figures.worst_request}); worst RSS {figures.worst_rss / 2**20:.0f} MiB, growth "
          f"{figures.worst_growth / 2**20:.0f} MiB (bound {RSS_GROWTH_BOUND / 2**20:.0f})")


@pytest.mark.parametrize("seed", list(SEEDS), ids=[seed.name for seed in SEEDS])
async def test_mutated_originals_get_spec_answers_in_time_and_leave_the_server_healthy(serve, tmp_path, seed,
                                                                                      seed_bytes):
    original = seed_bytes[seed]
    root = tmp_path / "origin"
    cases = []
    for index in range(cases_per_seed()):
        rng = random.Random(f"{seed.name}:{index}")
        data, mutations = mutate(seed, original, rng)
        entry = f"f{index}"
        make_entry(root, 100, entry, {f"original.{seed.extension}": data})
        cases.append((entry, data, mutations, requests_for(seed, rng)))
    make_entry(root, 100, "intact", {f"original.{seed.extension}": original})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"', FUZZ_LIMITS))
    runtime = client.server.app[RUNTIME]
    warm_up = ["thumbnail/entry_id/intact/width/64", "raw/entry_id/intact"]
    if seed.kind == "video":  # the clip process starts before any case is timed
        warm_up.append("flvclipper/entry_id/intact/clip_from/0/clip_to/400")
    for path in warm_up:
        intact = await ask(client, f"/p/100/{path}")
        assert intact.status == 200, (path, intact.status, intact.text)
    baseline = resident_bytes()
    sampling = True

    async def sample_memory() -> None:
        while sampling:
            rss = resident_bytes()
            FIGURES.worst_rss = max(FIGURES.worst_rss, rss)
            FIGURES.worst_growth = max(FIGURES.worst_growth, rss - baseline)
            await asyncio.sleep(0.005)

    sampler = asyncio.ensure_future(sample_memory())
    try:
        for start in range(0, len(cases), BATCH):
            batch = cases[start:start + BATCH]
            work = [(entry, data, mutations, path, headers, allowed)
                    for entry, data, mutations, asked in batch for path, headers, allowed in asked]
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(entry, data, mutations, path, headers, allowed) -> tuple[str, Answer]:
                service, _, params = path.partition("/")
                target = f"/p/100/{service}/entry_id/{entry}" + (f"/{params}" if params else "")
                async with gate:
                    return target, await ask(client, target, headers=headers)

            answers = await asyncio.gather(*(one(*item) for item in work))
            for (entry, data, mutations, path, headers, allowed), (target, answer) in zip(work, answers):
                case = f"{seed.name} {entry} {mutations} {target} {headers}"
                FIGURES.requests += 1
                FIGURES.statuses[answer.status] += 1
                if answer.seconds > FIGURES.worst_seconds:
                    FIGURES.worst_seconds, FIGURES.worst_request = answer.seconds, case
                assert answer.status in allowed, (case, answer.status, answer.text)
                assert_answer(answer)
                assert answer.seconds < REQUEST_SECONDS + SLACK_SECONDS, (case, answer.seconds)
                check_body(path, headers, data, answer, case)
            FIGURES.cases += len(batch)
            assert FIGURES.worst_growth < RSS_GROWTH_BOUND, f"RSS grew {FIGURES.worst_growth / 2**20:.0f} MiB"
            health = await ask(client, "/healthz")
            assert health.status == 200 and health.seconds < 1.0, (health.status, health.seconds)
            # nothing left running: a job that hung in a thread or a clip process would hold its pool
            await until(lambda: runtime.pool.pending == 0, timeout=15)
        intact = await ask(client, f"/p/100/thumbnail/entry_id/intact/width/{40 + len(cases) % 7}")
        assert intact.status == 200, intact.text  # the server still renders the intact medium
    finally:
        sampling = False
        await sampler


def check_body(path: str, headers: dict[str, str], data: bytes, answer: Answer, case: str) -> None:
    if path == "raw":
        if answer.status == 200:
            assert answer.body == data, case
        elif answer.status == 206:
            start, _, end = answer.headers["content-range"].removeprefix("bytes ").partition("/")[0].partition("-")
            assert answer.body == data[int(start):int(end) + 1], case
    elif path.startswith("thumbnail") and answer.status == 200:
        with Image.open(io.BytesIO(answer.body)) as image:
            image.load()
            assert image.width * image.height <= MAX_OUTPUT_PIXELS * 3, (case, image.size)  # strips: 3 frames
    elif path.startswith("flvclipper") and answer.status == 200:
        assert answer.headers["content-type"] in ("video/mp4", "video/x-flv"), case
        assert answer.body, case
