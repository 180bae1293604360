"""The real `mediaproxy serve` process: started as a user starts it, answering over loopback, stopped by SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fixtures.servers import children, wait_for

from .conftest import FIXTURE_MEDIA, REPO, free_port, wait_until


SERVE = [sys.executable, "-m", "mediaproxy", "serve"]


def start(args: list[str], env: dict[str, str], cwd) -> subprocess.Popen:
    return subprocess.Popen(args, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


class Serving:
    """What `serving` started: the process, its port, and once it has stopped, all it printed."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.output = ""


@contextmanager
def serving(args: list[str], env: dict[str, str], cwd, port: int, stop_seconds: float = 30) -> Iterator[Serving]:
    """`args` (a serve command) started in `cwd` with `env` added, up once it answers on `port`; stopped with
    SIGTERM at the end (its output read then)."""
    served = Serving(start(args, env, cwd), port)
    process = served.process
    try:
        wait_for(f"http://127.0.0.1:{port}/p/100/raw/entry_id/0_photo", process=process,
                 output=lambda: process.stdout.read() if process.poll() is not None else "")
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        served.output = process.communicate(timeout=stop_seconds)[0]


def on_the_bundled_config(tmp_path: Path, command: list[str], stop_seconds: float = 30):
    """`serving` a serve command run in tmp_path (so on the bundled config), on a free port given in
    MEDIAPROXY_PORT, its cache in tmp_path."""
    port = free_port()
    return serving(command, {"MEDIAPROXY_PORT": str(port), "MEDIAPROXY_CACHE_DIR": str(tmp_path / "cache")}, tmp_path,
                   port, stop_seconds)


@pytest.mark.parametrize("command", [SERVE, ["mediaproxy", "serve"]])
def test_serve_starts_on_the_bundled_config_and_stops_on_sigterm(tmp_path, command):
    executable = shutil.which(command[0], path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert executable, f"{command[0]} is not installed (pip install -e .)"
    with on_the_bundled_config(tmp_path, [executable, *command[1:]]) as served:
        port = served.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/sp/10000/raw/entry_id/0_photo") as response:
            assert response.status == 200
            assert response.read() == (FIXTURE_MEDIA / "100/0_photo/original.jpg").read_bytes()
    assert served.process.returncode == 0, served.output
    assert "Traceback" not in served.output
    assert f"on http://127.0.0.1:{port}/" in served.output
    assert "GET /p/100/sp/10000/raw/entry_id/0_photo 200" in served.output  # access log


def test_serve_with_config_and_port_options(tmp_path):
    config = tmp_path / "other.toml"
    config.write_text(f'[origin]\nroot = "{FIXTURE_MEDIA}"\n[cache]\ndir = "{tmp_path / "c"}"\n[server]\nport = 1\n')
    port = free_port()
    with serving([*SERVE, "--config", str(config), "--port", str(port)], {}, REPO, port):
        pass
    assert (tmp_path / "c").is_dir()


def test_the_config_can_come_from_the_environment(tmp_path):
    config = tmp_path / "env.toml"
    config.write_text(f'[origin]\nroot = "{FIXTURE_MEDIA}"\n[cache]\ndir = "{tmp_path / "c"}"\n')
    port = free_port()
    with serving(SERVE, {"MEDIAPROXY_CONFIG": str(config), "MEDIAPROXY_PORT": str(port)}, tmp_path, port):
        pass
    assert (tmp_path / "c").is_dir()


def test_workers_share_the_port_are_restarted_and_stop_together(tmp_path):
    with on_the_bundled_config(tmp_path, [*SERVE, "--workers", "2"], stop_seconds=60) as served:
        port, supervisor = served.port, served.process.pid
        wait_until(lambda: len(children(supervisor)) >= 2, 30, interval=0.2)
        workers = children(supervisor)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)  # a crashed worker is replaced

        def replaced() -> bool:
            now = children(supervisor)
            return len(now) == 2 and workers[0] not in now

        wait_until(replaced, 30, interval=0.2, failure=f"worker {workers[0]} was not replaced")
        now = children(supervisor)
        # a socket between bind() and listen() refuses what the kernel hands it: wait for the new one to listen
        wait_until(lambda: not set(now) - _listening(port), 30, interval=0.1)
        for _ in range(10):  # and the port keeps answering throughout
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/raw/entry_id/0_photo") as response:
                assert response.status == 200
    assert served.process.returncode == 0, served.output
    assert "(2 workers)" in served.output
    assert "starting another" in served.output
    assert not [pid for pid in now if os.path.exists(f"/proc/{pid}")], "workers outlived the supervisor"


def _listening(port: int) -> set[int]:
    """Pids holding a listening TCP socket on `port` (from /proc/net/tcp and each process's descriptors)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                found.add(int(pid))
        except OSError:
            continue
    return found
