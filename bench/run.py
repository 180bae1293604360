"""The mediaproxy benchmark: every scenario measured side by side in one run, reported as ratios.

    python bench/run.py [--seconds 5] [--only thumbnails|peers|mix|formats|videos|memory]

Needs `wrk` and `nginx` (apt-get install -y wrk nginx). Prints a Markdown table (and writes it to
bench/results/latest.md). Absolute figures depend on the machine and its neighbours; the ratios are the result.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (CORES, BareAiohttp, DeployedNginx, Load, Mediaproxy, Nginx, Thumbor, children,  # noqa: E402
                           in_threads, peak_rss_mb, run_in_background, tool, wait_for, wrk, wrk_list)
from bench.clips import clips  # noqa: E402
from bench.media import panning_video  # noqa: E402
from bench.remote import remote  # noqa: E402
from bench.soak import soak  # noqa: E402
from fixtures.generate import MEDIA_DIR, photo_like_image, photo_like_jpeg  # noqa: E402
from PIL import Image, ImageChops  # noqa: E402
from mediaproxy.media.encode import equivalent_quality  # noqa: E402
from mediaproxy.media.thumbnail import RenderSettings, render_image, render_video  # noqa: E402
from mediaproxy.options import OutputFormat  # noqa: E402
from mediaproxy.urls import parse  # noqa: E402

Row = tuple[str, str, str, str, str]  # scenario, mediaproxy, baseline, ratio, target


def thumbnails(workdir: Path, seconds: float) -> list[Row]:
    origin = workdir / "origin"
    photos = _photo_origin(origin)
    rows: list[Row] = []
    workers = int(os.environ.get("BENCH_WORKERS", CORES))
    offsets = iter(range(0, 7_000_000, 125_000))  # every cold request a new version, hence a new cache key
    extra = os.environ.get("BENCH_EXTRA_CONFIG", "").replace("\\n", "\n")
    no_reuse = {"MEDIAPROXY_CACHE_DECODED_BYTES": "0"}  # every request decodes, as the in-process baseline does
    with Mediaproxy(workdir / "mediaproxy", origin, workers=workers, extra=extra, environment=no_reuse) as server:
        wait_for(f"{server.url}/p/100/thumbnail/entry_id/0_hd")
        for entry, (width, height, name) in photos.items():
            output = "/format/png" if name.endswith(".png") else ""
            path = f"/p/100/sp/10000/thumbnail/entry_id/{entry}/width/320/height/240{output}/version/"
            data = (origin / "100" / entry / name).read_bytes()
            options = parse(path + "1", 100).options
            settings = RenderSettings(75)
            wrk(server.url, path, seconds=1, connections=4 * CORES, unique=True, offset=8_000_000)  # warm-up

            def cold_load(url: str) -> float:
                return wrk(url, path, seconds=seconds, connections=4 * CORES, unique=True,
                           offset=next(offsets)).requests_per_second

            def in_process() -> float:
                return in_threads(lambda _: render_image(options, data, settings), threads=CORES, seconds=seconds)

            kind = "PNG with alpha → PNG" if name.endswith(".png") else "JPEG →"
            if entry != "0_hd":
                cold, limit = alternate(lambda: cold_load(server.url), in_process)
            else:  # and the floor of any aiohttp server doing this render, and results_min_uses = 2, same rounds
                second_use = {**no_reuse, "MEDIAPROXY_CACHE_RESULTS_MIN_USES": "2"}
                with BareAiohttp(origin / "100" / entry / name, workers, thumbnail=path + "1") as floor, \
                        Mediaproxy(workdir / "mediaproxy-min-uses", origin, workers=workers, extra=extra,
                                   environment=second_use) as unwritten:
                    wait_for(f"{floor.url}/floor")
                    wait_for(f"{unwritten.url}/p/100/thumbnail/entry_id/0_hd")
                    cold_load(floor.url)  # warm-ups
                    cold_load(unwritten.url)
                    cold, limit, bare, once = alternate(lambda: cold_load(server.url), in_process,
                                                        lambda: cold_load(floor.url),
                                                        lambda: cold_load(unwritten.url))
            rows.append((f"cold thumbnails/s, {width}×{height} {kind} 320×240", f"{cold:.1f}",
                         f"{limit:.1f} (in-process, {CORES} threads)", f"{cold / limit:.2f}×",
                         "≥ 0.95×" if entry == "0_hd" else "≥ 0.9×"))
            if entry == "0_hd":
                rows.append(("  … bare aiohttp doing only this render (no parse, caches, checks), same rounds",
                             f"{bare:.1f}", f"{limit:.1f} (in-process, {CORES} threads)", f"{bare / limit:.2f}×", ""))
                rows.append(("  … mediaproxy with `results_min_uses = 2` (a URL asked once is not written), same "
                             "rounds", f"{once:.1f}", f"{limit:.1f} (in-process, {CORES} threads)",
                             f"{once / limit:.2f}×", ""))

    with Mediaproxy(workdir / "mediaproxy-reuse", origin, workers=workers) as server:
        wait_for(f"{server.url}/p/100/thumbnail/entry_id/0_hd")
        path = "/p/100/sp/10000/thumbnail/entry_id/0_hd/width/320/height/240/version/"
        data = (origin / "100" / "0_hd" / "original.jpg").read_bytes()
        options = parse(path + "1", 100).options
        settings = RenderSettings(75)
        wrk(server.url, path, seconds=1, connections=4 * CORES, unique=True, offset=8_000_000)
        reused, limit = alternate(
            lambda: wrk(server.url, path, seconds=seconds, connections=4 * CORES, unique=True,
                        offset=next(offsets)).requests_per_second,
            lambda: in_threads(lambda _: render_image(options, data, settings), threads=CORES, seconds=seconds),
            rounds=3)
        rows.append(("  … new sizes of a hot 1920×1080 original (its decoded picture kept)", f"{reused:.1f}",
                     f"{limit:.1f} (in-process, decoding each time)", f"{reused / limit:.2f}×", ""))

        hot_path = "/p/100/sp/10000/thumbnail/entry_id/0_hd/width/320/height/240"
        static = workdir / "static"
        static.mkdir()
        import urllib.request
        (static / "thumb.jpg").write_bytes(urllib.request.urlopen(server.url + hot_path).read())
        with Nginx(workdir / "nginx", static) as nginx, BareAiohttp(static / "thumb.jpg", CORES) as bare, \
                DeployedNginx(workdir / "deployed", [server.port, server.port], executable=tool("nginx")) as front:
            wait_for(nginx.url + "/thumb.jpg")
            wait_for(bare.url + "/thumb.jpg")
            wait_for(front.url + hot_path)  # the miss: from now on nginx's cache answers it
            wrk(server.url, hot_path, seconds=1, connections=32)  # every worker has it in memory
            wrk(front.url, hot_path, seconds=1, connections=32)

            def hot_load(url: str, target: str, what: str) -> Callable[[], Load]:
                return lambda: _checked(wrk(url, target, seconds=seconds, connections=32), what)
            hot, ceiling, fronted, plain = alternate(
                hot_load(server.url, hot_path, "hot thumbnails"), hot_load(bare.url, "/thumb.jpg", "bare aiohttp"),
                hot_load(front.url, hot_path, "deploy/nginx.conf"), hot_load(nginx.url, "/thumb.jpg", "nginx"),
                rounds=3, key=lambda load: load.requests_per_second)
        size = (static / "thumb.jpg").stat().st_size
        rows.append((f"hot thumbnail requests/s ({size // 1000} KB, memory cache, {CORES} workers)",
                     f"{hot.requests_per_second:.0f}", f"{ceiling.requests_per_second:.0f} (bare aiohttp serving "
                     f"the same bytes, {CORES} processes)",
                     f"{hot.requests_per_second / ceiling.requests_per_second:.2f}×", "≥ 0.8×"))
        rows.append(("  the same URL through deploy/nginx.conf (nginx's cache in front)",
                     f"{fronted.requests_per_second:.0f}", f"{plain.requests_per_second:.0f} (nginx static file, "
                     f"{CORES} workers)", f"{fronted.requests_per_second / plain.requests_per_second:.2f}×",
                     "≥ 0.9×"))
        rows.append(("  hot latency p50 / p99 (ms): mediaproxy; nginx static",
                     f"{hot.latency_ms_p50:.2f} / {hot.latency_ms_p99:.2f}",
                     f"{plain.latency_ms_p50:.2f} / {plain.latency_ms_p99:.2f}", "", ""))
    return rows


def _photo_origin(origin: Path) -> dict[str, tuple[int, int, str]]:
    """entry id → (width, height, file name) of photo-like sources: 1080p and 12 MP JPEGs, a PNG with alpha."""
    photos = {"0_hd": (1920, 1080, "original.jpg"), "0_12mp": (4000, 3000, "original.jpg"),
              "0_alpha": (1600, 1200, "original.png")}
    for entry, (width, height, name) in photos.items():
        folder = origin / "100" / entry
        folder.mkdir(parents=True)
        if name.endswith(".png"):
            image = photo_like_image(width, height, seed=5).convert("RGBA")
            image.putalpha(Image.linear_gradient("L").resize((width, height)))
            image.save(folder / name, optimize=False)
        else:
            (folder / name).write_bytes(photo_like_jpeg(width, height, quality=90))
    return photos


def peers(workdir: Path, seconds: float) -> list[Row]:
    """The same thumbnails from thumbor (its file loader on the same files), tuned and default."""
    origin = workdir / "origin"
    photos = _photo_origin(origin)
    rows: list[Row] = []
    offsets = iter(range(0, 7_000_000, 250_000))
    with Mediaproxy(workdir / "mediaproxy", origin, environment={"MEDIAPROXY_CACHE_DECODED_BYTES": "0"}) as server, \
            Thumbor(workdir / "thumbor-tuned", origin, tuned=True) as tuned, \
            Thumbor(workdir / "thumbor-default", origin, tuned=False) as default:
        for url in (f"{server.url}/healthz", f"{tuned.url}/healthcheck", f"{default.url}/healthcheck"):
            wait_for(url)
        for entry, (width, height, name) in photos.items():
            output = "/format/png" if name.endswith(".png") else ""
            ours = f"/p/100/sp/10000/thumbnail/entry_id/{entry}/width/320/height/240{output}/version/"
            theirs = f"/unsafe/fit-in/320x240/100/{entry}/{name}"
            for peer in (tuned, default):
                wrk(peer.url, theirs, seconds=1, connections=2 * CORES)  # warm-up
            measure = {
                "mediaproxy": lambda: wrk(server.url, ours, seconds=seconds, connections=4 * CORES, unique=True,
                                          offset=next(offsets)).requests_per_second,
                "tuned": lambda: wrk(tuned.url, theirs, seconds=seconds, connections=4 * CORES).requests_per_second,
                "default": lambda: wrk(default.url, theirs, seconds=seconds, connections=4 * CORES)
                .requests_per_second,
            }
            ours_tuned, thumbor_tuned = alternate(measure["mediaproxy"], measure["tuned"], rounds=3)
            ours_default, thumbor_default = alternate(measure["mediaproxy"], measure["default"], rounds=3)
            kind = "PNG with alpha" if name.endswith(".png") else "JPEG"
            rows.append((f"cold thumbnails/s, {width}×{height} {kind} → 320×240, vs thumbor tuned",
                         f"{ours_tuned:.1f}", f"{thumbor_tuned:.1f} (thumbor, {CORES} processes, engine pool "
                         f"{CORES})", f"{ours_tuned / thumbor_tuned:.2f}×", "≥ 1.0×"))
            rows.append(("  … vs thumbor default", f"{ours_default:.1f}", f"{thumbor_default:.1f} (thumbor "
                         "defaults)", f"{ours_default / thumbor_default:.2f}×", ""))
    return rows


MIX_WIDTHS = (320, 480, 640, 960)  # a srcset's sizes, type 3 at 4:3
MIX_ORIGINALS = 40
MIX_ROOMY_DECODED_BYTES = 512_000_000


def mix(workdir: Path, seconds: float) -> list[Row]:
    """What a CDN origin sees: 40 originals, each asked at the four sizes of a srcset, the 160 requests in a shuffled
    order, every one a new cache key; against thumbor tuned, with decoded pictures kept (derived sizes) and not."""
    origin = workdir / "origin"
    entries = _mix_origin(origin)
    asked = [(entry, width, width * 3 // 4) for entry in entries for width in MIX_WIDTHS]
    random.Random(15).shuffle(asked)
    ours = [f"/p/100/sp/10000/thumbnail/entry_id/{entry}/width/{width}/height/{height}/type/3/version/"
            for entry, width, height in asked]
    theirs = [f"/unsafe/{width}x{height}/100/{entry}/original.jpg" for entry, width, height in asked]
    offsets = iter(range(0, 8_800_000, 100_000))  # every request a new version, never one asked before
    no_reuse = {"MEDIAPROXY_CACHE_DECODED_BYTES": "0"}
    # the 40 originals' full-scale pictures are ~250 MB per worker: more than the default budget keeps
    roomy = {"MEDIAPROXY_CACHE_DECODED_BYTES": str(MIX_ROOMY_DECODED_BYTES)}
    with Mediaproxy(workdir / "mediaproxy", origin) as reuse, \
            Mediaproxy(workdir / "mediaproxy-no-reuse", origin, environment=no_reuse) as fresh, \
            Mediaproxy(workdir / "mediaproxy-roomy", origin, environment=roomy) as spacious, \
            Thumbor(workdir / "thumbor-tuned", origin, tuned=True) as tuned:
        for url in (f"{reuse.url}/healthz", f"{fresh.url}/healthz", f"{spacious.url}/healthz",
                    f"{tuned.url}/healthcheck"):
            wait_for(url)

        def ours_on(server: Mediaproxy) -> float:
            load = wrk_list(server.url, ours, seconds=seconds, connections=4 * CORES, unique=True,
                            offset=next(offsets))
            _check(load, "mix")
            return load.requests_per_second

        def thumbor() -> float:
            load = wrk_list(tuned.url, theirs, seconds=seconds, connections=4 * CORES)
            _check(load, "mix on thumbor")
            return load.requests_per_second

        for url, paths in ((reuse.url, ours), (fresh.url, ours), (spacious.url, ours), (tuned.url, theirs)):
            # the warm-up: thumbor starts slowly, and decoded pictures are kept from here on, as in steady traffic
            wrk_list(url, paths, seconds=2, connections=4 * CORES, unique=paths is ours, offset=next(offsets))
        reused, thumbor_reused = alternate(lambda: ours_on(reuse), thumbor, rounds=3)
        decoding, thumbor_decoding = alternate(lambda: ours_on(fresh), thumbor, rounds=3)
        roomy_reused, thumbor_roomy = alternate(lambda: ours_on(spacious), thumbor, rounds=3)
    peer = f"(thumbor, {CORES} processes, engine pool {CORES})"
    return [
        (f"mix thumbnails/s: {MIX_ORIGINALS} 1920×1080 JPEGs × widths {'/'.join(map(str, MIX_WIDTHS))} (type 3), "
         "shuffled, all new keys, vs thumbor tuned", f"{reused:.1f}", f"{thumbor_reused:.1f} {peer}",
         f"{reused / thumbor_reused:.2f}×", "≥ 2× (stretch 3×)"),
        ("  … decoded pictures not kept (`decoded_bytes = 0`)", f"{decoding:.1f}", f"{thumbor_decoding:.1f} {peer}",
         f"{decoding / thumbor_decoding:.2f}×", "≥ 1.0×"),
        (f"  … `decoded_bytes = {MIX_ROOMY_DECODED_BYTES // 1_000_000} MB` (every original kept: decoded once per "
         "worker)", f"{roomy_reused:.1f}", f"{thumbor_roomy:.1f} {peer}", f"{roomy_reused / thumbor_roomy:.2f}×", ""),
    ]


def _mix_origin(origin: Path) -> list[str]:
    """MIX_ORIGINALS distinct photo-like 1920×1080 JPEGs (quality 90): a few generated pictures (slow to make),
    each flipped and shifted into several originals whose pixels all differ."""
    bases = [photo_like_image(1920, 1080, seed=seed) for seed in range(5)]
    turns = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)
    entries = []
    for index in range(MIX_ORIGINALS):
        base = bases[index % len(bases)]
        turn = turns[index // len(bases) % len(turns)]
        picture = ImageChops.offset(base if turn is None else base.transpose(turn), 97 * index, 53 * index)
        entry = f"0_mix{index}"
        folder = origin / "100" / entry
        folder.mkdir(parents=True)
        picture.save(folder / "original.jpg", quality=90, subsampling="4:2:0")
        entries.append(entry)
    return entries


def formats(workdir: Path, seconds: float) -> list[Row]:
    """Bytes of the same thumbnails in WebP and AVIF against JPEG at the same quality setting (75), on photos:
    the mix's sizes of two 1080p photo-like JPEGs, a 12 MP one and the bundled photo; with the encoders' time and
    how far each lands from the picture before encoding (PSNR), since one quality number means another fidelity
    in each codec."""
    photos = [photo_like_jpeg(1920, 1080, quality=90, seed=seed) for seed in (1, 2)]
    photos += [photo_like_jpeg(4000, 3000, quality=90, seed=3), (MEDIA_DIR / "100/0_photo/original.jpg").read_bytes()]
    settings = RenderSettings(75)
    totals = {name: 0 for name in ("jpg", "webp", "avif", "avif at jpg's fidelity")}
    encode_ms = {name: [] for name in totals}
    fidelity = {name: [] for name in totals}
    for data in photos:
        for width in MIX_WIDTHS:
            size = f"/p/100/thumbnail/entry_id/x/width/{width}/height/{width * 3 // 4}/type/3"
            png = render_image(parse(size + "/format/png", 100).options, data, settings)
            lossless = Image.open(io.BytesIO(png.body))
            for name in totals:
                output = name.split()[0]
                quality = equivalent_quality(OutputFormat(output), 75) if " " in name else 75
                rendered = render_image(parse(f"{size}/format/{output}", 100).options, data, RenderSettings(quality))
                totals[name] += len(rendered.body)
                encode_ms[name].append(rendered.timings["encode"])
                fidelity[name].append(_psnr(Image.open(io.BytesIO(rendered.body)), lossless))
    count = len(photos) * len(MIX_WIDTHS)
    rows: list[Row] = []
    for name in ("webp", "avif", "avif at jpg's fidelity"):
        setting = f"quality {equivalent_quality(OutputFormat.AVIF, 75)} (format/auto's)" if " " in name else "quality 75"
        rows.append((f"thumbnail bytes, {count} photo thumbnails 320–960 wide, {name.split()[0]} at {setting} vs jpg at 75",
                     f"{totals[name] / 1000:.0f} KB", f"{totals['jpg'] / 1000:.0f} KB (jpg)",
                     f"{(totals[name] / totals['jpg'] - 1) * 100:+.0f} %", "smaller"))
    rows.append(("  encode ms per thumbnail, jpg / webp / avif / avif at jpg's fidelity",
                 " / ".join(f"{statistics.mean(encode_ms[name]):.1f}" for name in totals), "", "", ""))
    rows.append(("  PSNR against the picture before encoding (dB), jpg / webp / avif / avif at jpg's fidelity",
                 " / ".join(f"{statistics.mean(fidelity[name]):.1f}" for name in totals), "", "", ""))
    return rows


def _psnr(image: Image.Image, reference: Image.Image) -> float:
    histogram = ImageChops.difference(image.convert("RGB"), reference.convert("RGB")).histogram()
    squares = sum(value * value * count for channel in range(3)
                  for value, count in enumerate(histogram[channel * 256:(channel + 1) * 256]))
    return 10 * math.log10(255 ** 2 * 3 * image.width * image.height / max(squares, 1))


def memory(workdir: Path, seconds: float) -> list[Row]:
    """Peak resident memory per worker under 64 concurrent distinct 12 MP thumbnails."""
    origin = workdir / "origin"
    folder = origin / "100" / "0_12mp"
    folder.mkdir(parents=True)
    (folder / "original.jpg").write_bytes(photo_like_jpeg(4000, 3000, quality=90))
    cache_mb = 256
    with Mediaproxy(workdir / "mediaproxy", origin,
                    environment={"MEDIAPROXY_CACHE_RESULTS_MEMORY_BYTES": str(cache_mb * 1_000_000)}) as server:
        wait_for(f"{server.url}/healthz")
        workers = children(server.process.pid) or [server.process.pid]
        idle = max(peak_rss_mb(workers).values())
        load = wrk(server.url, "/p/100/sp/10000/thumbnail/entry_id/0_12mp/width/320/height/240/version/",
                   seconds=max(seconds, 5), connections=64, unique=True)
        _check(load, "memory scenario")
        peak = max(peak_rss_mb(workers).values())
    return [("peak RSS per worker, 64 concurrent 12 MP thumbnails (MB)", f"{peak:.0f} (idle {idle:.0f})",
             f"{cache_mb} (memory cache) + 200", f"{peak - cache_mb:+.0f} MB over the cache", "≤ +200 MB")]


def videos(workdir: Path, seconds: float) -> list[Row]:
    """Frame grabs vs the same PyAV work in-process; clips vs ffmpeg -c copy per request; images under clip load."""
    origin = workdir / "origin"
    sources = {"0_720p": (1280, 720), "0_1080p": (1920, 1080)}
    for entry, (width, height) in sources.items():
        folder = origin / "100" / entry
        folder.mkdir(parents=True)
        panning_video(folder / "original.mp4", width, height, seconds=10)
    photo = origin / "100" / "0_hd"
    photo.mkdir(parents=True)
    (photo / "original.jpg").write_bytes(photo_like_jpeg(1920, 1080, quality=90))
    rows: list[Row] = []
    offsets = iter(range(0, 7_000_000, 250_000))
    with Mediaproxy(workdir / "mediaproxy", origin) as server:
        wait_for(f"{server.url}/p/100/thumbnail/entry_id/0_hd")
        for entry, (width, height) in sources.items():
            source = origin / "100" / entry / "original.mp4"
            path = f"/p/100/sp/10000/thumbnail/entry_id/{entry}/width/320/height/180/vid_sec/4.5/version/"
            options = parse(path + "1", 100).options
            settings = RenderSettings(75)
            wrk(server.url, path, seconds=1, connections=CORES, unique=True, offset=8_000_000)  # warm-up
            grabs, limit = alternate(
                lambda: wrk(server.url, path, seconds=seconds, connections=2 * CORES, unique=True,
                            offset=next(offsets)).requests_per_second,
                lambda: in_threads(lambda _: render_video(options, source, [4.5], (width, height), settings),
                                   threads=CORES, seconds=seconds))
            rows.append((f"frame grabs/s, {height}p H.264 (exact frame, 0.5 s after a keyframe) → 320×180",
                         f"{grabs:.1f}", f"{limit:.1f} (same PyAV work in-process, {CORES} threads)",
                         f"{grabs / limit:.2f}×", "≥ 0.9×"))

        source = origin / "100" / "0_720p" / "original.mp4"
        clip_path = "/p/100/sp/10000/flvclipper/entry_id/0_720p/clip_to/8000/clip_from/"
        clips, ffmpeg = alternate(
            lambda: wrk(server.url, clip_path, seconds=seconds, connections=CORES, unique=True, modulo=4000,
                        offset=next(offsets), suffix="/a.mp4").requests_per_second,
            lambda: in_threads(lambda i: _ffmpeg_clip(source, (i % 4000) / 1000, 8.0,
                                                      workdir / f"ff{i // 1_000_000}.mp4"),
                               threads=CORES, seconds=seconds))
        rows.append(("clips/s, 720p MP4, 4–8 s long (by index rewrite)", f"{clips:.1f}",
                     f"{ffmpeg:.1f} (`ffmpeg -ss A -to B -c copy` per request, {CORES} at a time)",
                     f"{clips / ffmpeg:.2f}×", "> 1×"))

        image_path = "/p/100/sp/10000/thumbnail/entry_id/0_hd/width/320/height/240/version/"
        alone = wrk(server.url, image_path, seconds=seconds, connections=2 * CORES, unique=True, offset=1_000_000)
        background: list[Load] = []
        worker = run_in_background(lambda: background.append(wrk(
            server.url, clip_path, seconds=seconds, connections=2, unique=True, modulo=4000, suffix="/a.flv")))
        loaded = wrk(server.url, image_path, seconds=seconds, connections=2 * CORES, unique=True, offset=3_000_000)
        worker.join()
        rows.append(("cold 1080p thumbnails/s while FLV clips are remuxed", f"{loaded.requests_per_second:.1f} "
                     f"(+{background[0].requests_per_second:.1f} clips/s)", f"{alone.requests_per_second:.1f} (alone)",
                     f"{loaded.requests_per_second / alone.requests_per_second:.2f}×", "no collapse"))
    return rows


def _ffmpeg_clip(source: Path, start: float, end: float, target: Path) -> None:
    subprocess.run([tool("ffmpeg"), "-v", "error", "-y", "-ss", f"{start:.3f}", "-to", f"{end:.3f}", "-i",
                    str(source), "-c", "copy", "-movflags", "+faststart", str(target)], check=True)


def alternate(*measures: Callable[[], Any], rounds: int = 5, key: Callable[[Any], float] | None = None) -> tuple:
    """Medians of `rounds` alternating measurements (A B A B ..., or A B C A B C ...): drifts in a shared machine's
    load hit them all. With `key`, each measure's round whose key is the median (a Load, with its latencies)."""
    taken: list[list] = [[] for _ in measures]
    for _ in range(rounds):
        for measure, values in zip(measures, taken):
            values.append(measure())
    if key is None:
        return tuple(statistics.median(values) for values in taken)
    return tuple(sorted(values, key=key)[len(values) // 2] for values in taken)


def _check(load: Load, what: str) -> None:
    if load.requests == 0 or load.errors > load.requests * 0.01:
        raise SystemExit(f"bench: {what}: {load.errors} errors in {load.requests} requests")


def _checked(load: Load, what: str) -> Load:
    _check(load, what)
    return load


def _file_creation_us(files: int = 200) -> float:
    """What creating (and writing) a small file costs here, in µs of CPU: on an ext4 without a journal, the kernel
    skips the inodes freed in the last minutes when it allocates one, so for minutes after a mass deletion (a test
    run's or a previous run's temporary folders) every file creation costs up to ~30× more, and rows that write
    files read low. Reported with the table, so a run can be read against it."""
    with tempfile.TemporaryDirectory(prefix="mediaproxy-bench-files-") as folder:
        started = time.thread_time()
        for number in range(files):
            Path(folder, str(number)).write_bytes(b"x" * 12_000)
        return (time.thread_time() - started) / files * 1e6


SCENARIOS: dict[str, Callable[[Path, float], list[Row]]] = {
    "thumbnails": thumbnails, "peers": peers, "mix": mix, "formats": formats, "videos": videos, "memory": memory,
    "remote": remote, "clips": clips, "soak": soak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="run only these scenarios")
    args = parser.parse_args()
    rows: list[Row] = []
    started = time.monotonic()
    creation_before = _file_creation_us()
    for name in args.only or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix=f"mediaproxy-bench-{name}-") as workdir:
            try:
                found = SCENARIOS[name](Path(workdir), args.seconds)
            except (Exception, SystemExit) as error:  # one broken scenario must not lose the others' figures
                found = [(f"{name}: failed ({type(error).__name__}: {error})", "", "", "", "")]
        for row in found:
            print("| " + " | ".join(row) + " |", flush=True)
        rows += found
    table = ["| scenario | mediaproxy | baseline | ratio | target |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    report = "\n".join(table) + f"\n\n{CORES} cores, {args.seconds:g} s per measurement, " \
                                f"{time.strftime('%Y-%m-%d')}, total {time.monotonic() - started:.0f} s; creating a " \
                                f"file took {creation_before:.0f} µs at the start\n"
    print(report)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
