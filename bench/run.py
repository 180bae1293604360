"""The mediaproxy benchmark: every scenario measured side by side in one run, reported as ratios.

    python bench/run.py [--seconds 5] [--only thumbnails]

Needs `wrk` and `nginx` (apt-get install -y wrk nginx). Prints a Markdown table (and writes it to
bench/results/latest.md). Absolute figures depend on the machine and its neighbours; the ratios are the result.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import CORES, Load, Mediaproxy, Nginx, in_threads, wait_for, wrk  # noqa: E402
from fixtures.generate import photo_like_jpeg  # noqa: E402
from mediaproxy.media.thumbnail import RenderSettings, render_image  # noqa: E402
from mediaproxy.urls import parse  # noqa: E402

Row = tuple[str, str, str, str, str]  # scenario, mediaproxy, baseline, ratio, target


def thumbnails(workdir: Path, seconds: float) -> list[Row]:
    origin = workdir / "origin"
    photos = {"0_hd": (1920, 1080), "0_12mp": (4000, 3000)}
    for entry, (width, height) in photos.items():
        folder = origin / "100" / entry
        folder.mkdir(parents=True)
        (folder / "original.jpg").write_bytes(photo_like_jpeg(width, height, quality=90))
    rows: list[Row] = []
    with Mediaproxy(workdir / "mediaproxy", origin) as server:
        wait_for(f"{server.url}/p/100/thumbnail/entry_id/0_hd")
        for entry, (width, height) in photos.items():
            path = f"/p/100/sp/10000/thumbnail/entry_id/{entry}/width/320/height/240/version/"
            data = (origin / "100" / entry / "original.jpg").read_bytes()
            request = parse(path + "1", 100)
            settings = RenderSettings(75)
            limit = in_threads(lambda _: render_image(request, data, settings), threads=CORES, seconds=seconds)
            wrk(server.url, path, seconds=1, connections=2 * CORES, unique=True, offset=5_000_000)  # warm-up
            cold = wrk(server.url, path, seconds=seconds, connections=2 * CORES, unique=True)
            _check(cold, "cold thumbnails")
            rows.append((f"cold thumbnails/s, {width}×{height} JPEG → 320×240",
                         f"{cold.requests_per_second:.1f}", f"{limit:.1f} (in-process, {CORES} threads)",
                         f"{cold.requests_per_second / limit:.2f}×", "≥ 0.9×"))

        hot_path = "/p/100/sp/10000/thumbnail/entry_id/0_hd/width/320/height/240"
        static = workdir / "static"
        static.mkdir()
        import urllib.request
        (static / "thumb.jpg").write_bytes(urllib.request.urlopen(server.url + hot_path).read())
        with Nginx(workdir / "nginx", static) as nginx:
            wait_for(nginx.url + "/thumb.jpg")
            hot = wrk(server.url, hot_path, seconds=seconds, connections=32)
            _check(hot, "hot thumbnails")
            plain = wrk(nginx.url, "/thumb.jpg", seconds=seconds, connections=32)
            _check(plain, "nginx")
        size = (static / "thumb.jpg").stat().st_size
        rows.append((f"hot thumbnail requests/s ({size // 1000} KB, memory cache)", f"{hot.requests_per_second:.0f}",
                     f"{plain.requests_per_second:.0f} (nginx static file)",
                     f"{hot.requests_per_second / plain.requests_per_second:.2f}×", "≥ 0.5×"))
        rows.append(("  hot latency p50 / p99 (ms)", f"{hot.latency_ms_p50:.2f} / {hot.latency_ms_p99:.2f}",
                     f"{plain.latency_ms_p50:.2f} / {plain.latency_ms_p99:.2f}", "", ""))
    return rows


def _check(load: Load, what: str) -> None:
    if load.requests == 0 or load.errors > load.requests * 0.01:
        raise SystemExit(f"bench: {what}: {load.errors} errors in {load.requests} requests")


SCENARIOS: dict[str, Callable[[Path, float], list[Row]]] = {"thumbnails": thumbnails}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="run only these scenarios")
    args = parser.parse_args()
    rows: list[Row] = []
    started = time.monotonic()
    for name in args.only or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix=f"mediaproxy-bench-{name}-") as workdir:
            rows += SCENARIOS[name](Path(workdir), args.seconds)
    table = ["| scenario | mediaproxy | baseline | ratio | target |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    report = "\n".join(table) + f"\n\n{CORES} cores, {args.seconds:g} s per measurement, " \
                                f"{time.strftime('%Y-%m-%d')}, total {time.monotonic() - started:.0f} s\n"
    print(report)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
