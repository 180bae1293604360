"""The `soak` scenario (issue 12): a realistic mix for ~10 minutes against mediaproxy (2 workers) on an http
origin (nginx), sampling every worker's resident memory, open file descriptors and the disk cache each second.

    python bench/run.py --only soak            # BENCH_SOAK_SECONDS (default 600) of load

The mix, one request in ten each: thumbnails of many sizes and modes (four in ten), a frame grab, a strip, a clip
(by index; one in five of them remuxed into FLV), a raw Range, a conditional request answered 304, an error (an
unknown entry or a bad parameter). Budgets are small, so the cache evicts all along. It passes when resident memory
in the last half grows less than 5%, no descriptor leaks and the cache stays within its budgets; the samples go to
bench/results/soak.csv and a plot (matplotlib, in the benchmark's own environment) to docs/soak.png.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fixtures.generate import photo_like_jpeg

from .harness import CORES, Mediaproxy, Nginx, children, wait_for, wrk_lua
from .media import panning_video

Row = tuple[str, str, str, str, str]
RESULTS = Path(__file__).resolve().parent / "results"
PLOT = Path(__file__).resolve().parent.parent / "docs" / "soak.png"
PLOT_VENV = Path(__file__).resolve().parent / ".venv-plot"
BUDGET = {"originals_bytes": 150_000_000, "results_bytes": 60_000_000, "index_bytes": 20_000_000}
PHOTOS = 12


def soak(workdir: Path, seconds: float) -> list[Row]:
    duration = float(os.environ.get("BENCH_SOAK_SECONDS", 600))
    origin = workdir / "upstream"
    for index in range(PHOTOS):
        folder = origin / "100" / f"0_p{index}"
        folder.mkdir(parents=True)
        (folder / "original.jpg").write_bytes(photo_like_jpeg(1920, 1080, quality=88, seed=index))
    video = origin / "100" / "0_v" / "original.mp4"
    video.parent.mkdir(parents=True)
    panning_video(video, 1280, 720, seconds=60)
    extra = "\n".join(f"{key} = {value}" for key, value in BUDGET.items())
    with Nginx(workdir / "nginx", origin) as nginx, Mediaproxy(
            workdir / "mediaproxy", origin=f'kind = "http"\nurl = "{nginx.url}"', extra=extra,
            workers=CORES) as server:
        # every worker listening before wrk opens its connections: it keeps them for the whole run, so a worker that
        # was still starting would get none (and the samples would show it idle)
        server.wait_up(60)
        wait_for(f"{server.url}/healthz")
        conditional = "/p/100/sp/10000/thumbnail/entry_id/0_p0/width/300"
        with urllib.request.urlopen(server.url + conditional) as response:
            etag = response.headers["ETag"]
        workers = children(server.process.pid)
        samples: list[dict] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(workers, workdir / "mediaproxy" / "cache", samples, stop))
        sampler.start()
        try:
            load = wrk_lua(server.url, _mix(etag.replace('"', '\\"'), conditional), seconds=duration,
                           connections=4 * CORES)
        finally:
            stop.set()
            sampler.join()
    return _report(samples, load, duration, workers)


def _mix(etag: str, conditional: str) -> str:
    return f"""
  local n = counter
  local kind = n % 10
  local base = "/p/100/sp/10000/"
  if kind < 4 then
    return wrk.format("GET", base .. "thumbnail/entry_id/0_p" .. (n % {PHOTOS}) .. "/width/" .. (60 + (n * 37) % 900)
      .. "/type/" .. (1 + n % 4))
  elseif kind == 4 then
    return wrk.format("GET", base .. "thumbnail/entry_id/0_v/width/320/vid_sec/" .. ((n * 7) % 60))
  elseif kind == 5 then
    return wrk.format("GET", base .. "thumbnail/entry_id/0_v/width/80/vid_slices/4/version/" .. (n % 40))
  elseif kind == 6 then
    local start = (n * 13) % 50
    local suffix = (n % 5 == 0) and "/a.flv" or "/a.mp4"
    return wrk.format("GET", base .. "flvclipper/entry_id/0_v/clip_from/" .. start * 1000 .. "/clip_to/"
      .. (start + 5) * 1000 .. suffix)
  elseif kind == 7 then
    local first = (n * 104729) % 5000000
    return wrk.format("GET", base .. "raw/entry_id/0_v", {{["Range"] = "bytes=" .. first .. "-" .. (first + 65535)}})
  elseif kind == 8 then
    return wrk.format("GET", "{conditional}", {{["If-None-Match"] = "{etag}"}})
  elseif n % 2 == 0 then
    return wrk.format("GET", base .. "thumbnail/entry_id/0_missing" .. n % 100 .. "/width/100")
  end
  return wrk.format("GET", base .. "thumbnail/entry_id/0_p1/width/abc")"""


def _sample(workers: list[int], cache: Path, samples: list[dict], stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        row = {"second": round(time.monotonic() - started, 1), "cache_mb": _bytes(cache / "data") / 1e6}
        for index, pid in enumerate(workers):
            row[f"rss_mb_{index}"] = _status(pid, "VmRSS") / 1024
            row[f"fds_{index}"] = len(os.listdir(f"/proc/{pid}/fd")) if Path(f"/proc/{pid}").exists() else 0
        samples.append(row)


def _report(samples: list[dict], load, duration: float, workers: list[int]) -> list[Row]:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "soak.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    _plot(RESULTS / "soak.csv")
    rows: list[Row] = [(f"soak: {duration / 60:.0f} min of the mix, {load.requests_per_second:.0f} requests/s",
                        f"{load.requests} requests", f"{load.errors} non-2xx/3xx (the mix asks 1 in 10 to fail)",
                        "", "")]
    half = len(samples) // 2
    for index in range(len(workers)):
        rss = [sample[f"rss_mb_{index}"] for sample in samples]
        growth = (max(rss[half:]) - rss[half]) / rss[half]
        fds = [sample[f"fds_{index}"] for sample in samples]
        rows.append((f"  worker {index}: RSS start / peak / end (MB)", f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f}",
                     f"growth in the last half {growth:+.1%}", "", "< 5%"))
        rows.append((f"  worker {index}: open descriptors start / peak / end",
                     f"{fds[0]} / {max(fds)} / {fds[-1]}", "", "", "no leak"))
    budget = sum(BUDGET.values()) / 1e6
    cache = max(sample["cache_mb"] for sample in samples)
    rows.append(("  disk cache, peak (MB)", f"{cache:.0f}", f"{budget:.0f} (the budgets)", f"{cache / budget:.2f}×",
                 "≤ 1×"))
    return rows


def _plot(csv_file: Path) -> None:
    """RSS of every worker over time, drawn by matplotlib in its own virtualenv (not a dependency of the server)."""
    python = PLOT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PLOT_VENV)], check=True)
        subprocess.run([str(PLOT_VENV / "bin" / "pip"), "install", "-q", "matplotlib"], check=True)
    script = f"""
import csv
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open({str(csv_file)!r})))
seconds = [float(row["second"]) / 60 for row in rows]
figure, axes = plt.subplots(figsize=(8, 3.2), dpi=110)
for key in [key for key in rows[0] if key.startswith("rss_mb_")]:
    axes.plot(seconds, [float(row[key]) for row in rows], label="worker " + key.rsplit("_", 1)[1])
axes.set_xlabel("minutes"); axes.set_ylabel("resident memory (MB)"); axes.set_ylim(bottom=0)
axes.set_title("mediaproxy soak: RSS per worker under the mix"); axes.legend(); axes.grid(alpha=0.3)
figure.tight_layout(); figure.savefig({str(PLOT)!r})
"""
    subprocess.run([str(python), "-c", script], check=True)


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def _bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total
