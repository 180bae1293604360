"""Benchmark plumbing: start mediaproxy and nginx on loopback, drive them with wrk, run in-process baselines.

Everything a scenario compares is measured in the same run, side by side, because these machines are shared and
noisy: only ratios are meaningful, absolute figures are printed for context.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fixtures import servers
from fixtures.servers import DeployedNginx, children, find_tool, free_port, wait_for  # noqa: F401 - for scenarios

CORES = os.cpu_count() or 1


def tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise SystemExit(f"bench: {name} is not installed (apt-get install -y {name})")
    return path


class Mediaproxy(servers.Mediaproxy):
    """`mediaproxy serve` as a user runs it, on a config written for the benchmark (no access log; originals
    trusted for an hour)."""

    def __init__(self, workdir: Path, origin_root: Path | None = None, extra: str = "", workers: int = CORES,
                 environment: dict[str, str] | None = None, origin: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "mediaproxy.toml"
        origin = origin or f'root = "{origin_root}"'  # or an http origin's lines
        config.write_text(f'[server]\naccess_log = false\n'
                          f'[origin]\n{origin}\nrevalidate_seconds = 3600\n'
                          f'[cache]\ndir = "{workdir / "cache"}"\n{extra}\n')
        super().__init__(config, workdir / "mediaproxy.log", workers=workers, environment=environment)

    def __exit__(self, *exc) -> None:
        self.stop(20)


class Nginx(servers.Nginx):
    """nginx serving a folder of static files on loopback, one worker process per core (its default tuning).

    `server_extra`: more directives for its server block (a `limit_rate`, an `mp4` location); with `log`, every
    request is logged as "method uri status bytes_sent" (see `sent`)."""

    def __init__(self, workdir: Path, root: Path, *, server_extra: str = "", log: bool = False) -> None:
        super().__init__(root, workdir, server_extra=server_extra, tuned=True, executable=tool("nginx"),
                         log=("$request_method", "$uri", "$status", "$bytes_sent") if log else ())

    def sent(self) -> int:
        """Bytes nginx has sent so far (headers included), from its access log (nginx writes each line when the
        request ends)."""
        return sum(int(fields[3]) for fields in self.logged())


class BareAiohttp:
    """bench/bare_aiohttp.py in `processes` processes sharing a port: the ceiling of any aiohttp server; with
    `thumbnail` (a thumbnail URL), the floor of one that renders `body` as that URL asks on every request."""

    def __init__(self, body: Path, processes: int, thumbnail: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).resolve().parent / "bare_aiohttp.py"
        self.processes = [subprocess.Popen([sys.executable, str(script), str(body), str(self.port)]
                                           + ([thumbnail] if thumbnail else [])) for _ in range(processes)]

    def __enter__(self) -> BareAiohttp:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)


@dataclass
class Load:
    requests_per_second: float
    requests: int
    errors: int  # non-2xx/3xx answers and socket errors
    latency_ms_p50: float
    latency_ms_p99: float


def wrk(url: str, path: str, *, seconds: float, connections: int, threads: int = 1, unique: bool = False,
        offset: int = 0, modulo: int = 0, suffix: str = "") -> Load:
    """Drive GET url+path (with unique=True: path + a counter, so every request is a new cache key).

    Counters start at offset + 1,000,000 × thread number: keep offset + threads × 1e6 under 10,000,000 when the
    counter is a `version` (which is clamped there). With `modulo`, the path is prefix + counter % modulo + suffix.
    """
    value = f"counter % {modulo}" if modulo > 0 else "counter"
    body = f'return wrk.format("GET", prefix .. {value} .. suffix)' if unique else 'return wrk.format("GET", prefix)'
    return wrk_lua(url, body, seconds=seconds, connections=connections, threads=threads, offset=offset,
                   prelude=f"local prefix = {_lua_string(path)}\nlocal suffix = {_lua_string(suffix)}")


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_wrk(url: str, lua: str, *, threads: int, seconds: float, connections: int) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        result = subprocess.run([tool("wrk"), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                                 "--timeout", "30s", "-s", script.name, url], capture_output=True, text=True,
                                check=True)
    finally:
        os.unlink(script.name)
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"could not read wrk's output:\n{result.stdout}\n{result.stderr}")
    requests, errors = int(match[1]), int(match[2])
    return Load(requests / seconds, requests, errors, float(match[3]), float(match[4]))


_WRK_LUA = """
{prelude}
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("offset", {offset_base} + threads * 1000000)
end
function init(args)
  counter = offset
end
request = function()
  counter = counter + 1
  {body}
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %f %f\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk_lua(url: str, body: str, *, seconds: float, connections: int, prelude: str = "", offset: int = 0,
            threads: int = 1) -> Load:
    """Drive url with requests made by a Lua `request` body that sees `counter` (offset + 1,000,000 × thread
    number, then + 1 per request) and returns `wrk.format(...)`: paths computed per request (a clip window from
    the counter, say). `prelude`: Lua run once before (a table of paths)."""
    lua = _WRK_LUA.replace("{prelude}", prelude).replace("{offset_base}", str(offset)).replace("{body}", body)
    return _run_wrk(url, lua, threads=threads, seconds=seconds, connections=connections)


def wrk_list(url: str, paths: list[str], *, seconds: float, connections: int, unique: bool = False,
             offset: int = 0) -> Load:
    """Drive GET url+path for each path of `paths` in turn, round and round (with unique=True: path + a counter,
    every request a new cache key; the counter's rules are wrk's). The list starts where the counter falls."""
    listed = ", ".join(_lua_string(path) for path in paths)
    body = "local path = paths[counter % #paths + 1]\n  "
    body += "path = path .. counter\n  " if unique else ""
    body += 'return wrk.format("GET", path)'
    return wrk_lua(url, body, seconds=seconds, connections=connections, prelude=f"local paths = {{{listed}}}",
                   offset=offset)


def in_threads(work: Callable[[int], object], *, threads: int, seconds: float) -> float:
    """Operations per second of `work(i)` run back to back in `threads` threads for `seconds`."""
    done = [0] * threads
    stop = time.monotonic() + seconds

    def loop(slot: int) -> None:
        count = 0
        while time.monotonic() < stop:
            work(slot * 1_000_000 + count)
            count += 1
        done[slot] = count

    started = time.monotonic()
    workers = [threading.Thread(target=loop, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.monotonic() - started)


def run_in_background(function: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


THUMBOR_VENV = Path(__file__).resolve().parent / ".venv-thumbor"


def thumbor_executable() -> Path:
    """thumbor, installed from PyPI into the benchmark's own virtualenv on first use."""
    executable = THUMBOR_VENV / "bin" / "thumbor"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(THUMBOR_VENV)], check=True)
        subprocess.run([str(THUMBOR_VENV / "bin" / "pip"), "install", "-q", "thumbor"], check=True,
                       stderr=subprocess.DEVNULL)
    return executable


class Thumbor:
    """thumbor with its file loader on `root`; `tuned`: engine pool and processes set to the cores."""

    def __init__(self, workdir: Path, root: Path, *, tuned: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "thumbor.conf"
        lines = [f"LOADER = 'thumbor.loaders.file_loader'", f"FILE_LOADER_ROOT_PATH = '{root}'", "QUALITY = 75",
                 f"FILE_STORAGE_ROOT_PATH = '{workdir / 'storage'}'"]
        if tuned:
            lines += [f"ENGINE_THREADPOOL_SIZE = {CORES}", "STORAGE = 'thumbor.storages.no_storage'"]
        conf.write_text("\n".join(lines) + "\n")
        command = [str(thumbor_executable()), "-p", str(self.port), "-i", "127.0.0.1", "-c", str(conf), "-l", "error"]
        if tuned:
            command += ["--processes", str(CORES)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Thumbor:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        subprocess.run(["pkill", "-f", f"thumbor -p {self.port} "], check=False)  # thumbor's forked processes


def peak_rss_mb(pids: list[int]) -> dict[int, float]:
    """VmHWM (peak resident memory) of each process, in MB."""
    peaks = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) / 1024
        except FileNotFoundError:
            continue
    return peaks
