"""config.toml loading, validation and MEDIAPROXY_* overrides; the CLI refusing a bad config in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mediaproxy.config import DEFAULT_CONFIG_PATH, ConfigError, load

from .conftest import FIXTURE_MEDIA, REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_bundled_config_serves_the_fixtures():
    assert DEFAULT_CONFIG_PATH == REPO / "config.toml"
    config = load(DEFAULT_CONFIG_PATH, environ={})
    assert config.origin.kind == "local"
    assert config.origin.root == FIXTURE_MEDIA
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.cache.dir == REPO / ".cache"
    assert config.defaults.partner_id == 100
    assert config.partners[200].ks_required_for == ("raw",)
    assert config.max_age("thumbnail", 100) == 3600
    assert config.max_age("raw", 100) == 8_640_000


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "media").mkdir()
    config = load(write(tmp_path, '[origin]\nroot = "media"\n[cache]\ndir = "c"\n'), environ={})
    assert config.origin.root == tmp_path / "media"
    assert config.cache.dir == tmp_path / "c"


@pytest.mark.parametrize("text, message", [
    ("[origin]\nroot = 'media'\n[nope]\nx = 1\n", "unknown section [nope]"),
    ("[origin]\nroot = 'media'\nrot = 'x'\n", "[origin] unknown key 'rot'"),
    ("[origin]\nroot = 'media'\n[server]\nport = 'eighty'\n", "[server] port must be an integer"),
    ("[origin]\nroot = 'media'\n[server]\nport = true\n", "[server] port must be an integer"),
    ("[origin]\nroot = 'media'\n[server]\nport = 70000\n", "not a TCP port"),
    ("[origin]\nroot = 'missing'\n", "is not a folder"),
    ("[origin]\nkind = 'local'\n", "needs root"),
    ("[origin]\nkind = 'ftp'\n", "kind must be"),
    ("[origin]\nkind = 'http'\n", "needs url"),
    ("[origin]\nroot = 'media'\nextensions = ['.jpg']\n", "plain extensions"),
    ("[origin]\nroot = 'media'\n[partners.200]\nks_required_for = ['raw']\n", "no admin_secrets"),
    ("[origin]\nroot = 'media'\n[partners.200]\nadmin_secrets = ['s']\nks_required_for = ['rwa']\n",
     "unknown service 'rwa'"),
    ("[origin]\nroot = 'media'\n[partners.abc]\n", "partner id must be an integer"),
    ("[origin]\nroot = 'media'\n[cache]\nresults_min_uses = 0\n", "results_min_uses must be 1"),
    ("[origin]\nroot = 'media'\n[cache]\nresults_min_uses = 3\n", "results_min_uses must be 1"),
    ("[origin\n", "not valid TOML"),
])
def test_bad_configs_are_one_clear_line(tmp_path, text, message):
    (tmp_path / "media").mkdir()
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text), environ={})
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_environment_overrides(tmp_path):
    (tmp_path / "media").mkdir()
    path = write(tmp_path, "[origin]\nroot = 'media'\n")
    config = load(path, environ={
        "MEDIAPROXY_PORT": "9999", "MEDIAPROXY_HOST": "0.0.0.0", "MEDIAPROXY_CACHE_DIR": str(tmp_path / "elsewhere"),
        "MEDIAPROXY_CACHE_RESULTS_MEMORY_BYTES": "1000", "MEDIAPROXY_ORIGIN_EXTENSIONS": "jpg, png",
        "MEDIAPROXY_SERVER_ACCESS_LOG": "false", "MEDIAPROXY_PARTNER_300_ADMIN_SECRETS": "one,two",
        "MEDIAPROXY_CONFIG": "ignored here", "MEDIAPROXY_REQUIRE_TOOLS": "1",
    })
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9999)
    assert config.cache.dir == tmp_path / "elsewhere"
    assert config.cache.results_memory_bytes == 1000
    assert config.origin.extensions == ("jpg", "png")
    assert config.server.access_log is False
    assert config.partners[300].admin_secrets == ("one", "two")


@pytest.mark.parametrize("cores, workers, threads, expected", [
    (2, 0, 0, 2),  # a worker per core, and two threads each: one computing while the worker prepares its next
    (8, 0, 0, 2),
    (8, 2, 0, 4),  # the cores divided among the workers
    (8, 1, 0, 8),
    (1, 0, 0, 2),
    (8, 0, 1, 1),  # as configured
])
def test_work_threads_per_worker(tmp_path, monkeypatch, cores, workers, threads, expected):
    (tmp_path / "media").mkdir()
    monkeypatch.setattr("mediaproxy.config.os.cpu_count", lambda: cores)
    text = f"[origin]\nroot = 'media'\n[server]\nworkers = {workers}\n[processing]\nthreads = {threads}\n"
    config = load(write(tmp_path, text), environ={})
    assert config.worker_count == (workers or cores)
    assert config.thread_count == expected


@pytest.mark.parametrize("name, value, message", [
    ("MEDIAPROXY_PORT", "abc", "MEDIAPROXY_PORT: 'abc' is not an integer"),
    ("MEDIAPROXY_CACHE_NOPE", "1", "has no key 'nope'"),
    ("MEDIAPROXY_SERVER_ACCESS_LOG", "maybe", "is not true or false"),
])
def test_bad_environment_overrides(tmp_path, name, value, message):
    (tmp_path / "media").mkdir()
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, "[origin]\nroot = 'media'\n"), environ={name: value})
    assert message in str(raised.value)


def test_the_cli_refuses_a_bad_config_in_one_line(tmp_path):
    path = write(tmp_path, "[origin]\nroot = 'nowhere'\n")
    result = subprocess.run([sys.executable, "-m", "mediaproxy", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("mediaproxy: config error: [origin] root")
    assert "Traceback" not in result.stderr
