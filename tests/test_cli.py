"""The real `mediaproxy serve` process: started as a user starts it, answering over loopback, stopped by SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
import urllib.error
import urllib.request

import pytest

from .conftest import FIXTURE_MEDIA, REPO, free_port


def start(args: list[str], env: dict[str, str], cwd) -> subprocess.Popen:
    return subprocess.Popen(args, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_until_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/raw/entry_id/0_photo", timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("server did not come up")


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "mediaproxy", "serve"],
    ["mediaproxy", "serve"],
])
def test_serve_starts_on_the_bundled_config_and_stops_on_sigterm(tmp_path, command):
    executable = shutil.which(command[0], path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert executable, f"{command[0]} is not installed (pip install -e .)"
    port = free_port()
    process = start([executable, *command[1:]],
                    {"MEDIAPROXY_PORT": str(port), "MEDIAPROXY_CACHE_DIR": str(tmp_path / "cache")}, tmp_path)
    try:
        wait_until_up(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/sp/10000/raw/entry_id/0_photo") as response:
            assert response.status == 200
            assert response.read() == (FIXTURE_MEDIA / "100/0_photo/original.jpg").read_bytes()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert f"on http://127.0.0.1:{port}/" in output
    assert "GET /p/100/sp/10000/raw/entry_id/0_photo 200" in output  # access log


def test_serve_with_config_and_port_options(tmp_path):
    config = tmp_path / "other.toml"
    config.write_text(f'[origin]\nroot = "{FIXTURE_MEDIA}"\n[cache]\ndir = "{tmp_path / "c"}"\n[server]\nport = 1\n')
    port = free_port()
    process = start([sys.executable, "-m", "mediaproxy", "serve", "--config", str(config), "--port", str(port)],
                    {}, REPO)
    try:
        wait_until_up(port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert (tmp_path / "c").is_dir()


def test_the_config_can_come_from_the_environment(tmp_path):
    config = tmp_path / "env.toml"
    config.write_text(f'[origin]\nroot = "{FIXTURE_MEDIA}"\n[cache]\ndir = "{tmp_path / "c"}"\n')
    port = free_port()
    process = start([sys.executable, "-m", "mediaproxy", "serve"],
                    {"MEDIAPROXY_CONFIG": str(config), "MEDIAPROXY_PORT": str(port)}, tmp_path)
    try:
        wait_until_up(port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert (tmp_path / "c").is_dir()


def test_workers_share_the_port_are_restarted_and_stop_together(tmp_path):
    port = free_port()
    process = start([sys.executable, "-m", "mediaproxy", "serve", "--workers", "2"],
                    {"MEDIAPROXY_PORT": str(port), "MEDIAPROXY_CACHE_DIR": str(tmp_path / "cache")}, tmp_path)
    try:
        wait_until_up(port, process)
        workers = _children(process.pid)
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _children(process.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)  # a crashed worker is replaced
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = _children(process.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and workers[0] not in now, now
        # a socket between bind() and listen() refuses what the kernel hands it: wait for the new one to listen
        deadline = time.monotonic() + 30
        while set(now) - _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(10):  # and the port keeps answering throughout
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/raw/entry_id/0_photo") as response:
                assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "(2 workers)" in output
    assert "starting another" in output
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


def _children(pid: int) -> list[int]:
    """Worker processes of the supervisor (multiprocessing's resource tracker has no port, skip it)."""
    children = []
    for path in os.listdir("/proc"):
        if not path.isdigit():
            continue
        try:
            with open(f"/proc/{path}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{path}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in command:
            children.append(int(path))
    return sorted(children)
