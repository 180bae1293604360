"""config.toml (+ MEDIAPROXY_* environment overrides) → frozen, validated settings.

Every key is declared once, as a dataclass field: its type is what the file must hold, its default is what an
absent key means. An unknown key, a wrong type or a missing origin root is a `ConfigError` with one clear line,
raised before the server starts.

Environment overrides: `MEDIAPROXY_<SECTION>_<KEY>` for any key (`MEDIAPROXY_CACHE_DISK_BYTES=5e9` is not valid,
`MEDIAPROXY_CACHE_DISK_BYTES=5000000000` is), plus the short forms `MEDIAPROXY_PORT`, `MEDIAPROXY_HOST` and
`MEDIAPROXY_PARTNER_<N>_ADMIN_SECRETS` (comma-separated). `MEDIAPROXY_CONFIG` names the file itself (see cli).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .refs import ID_PATTERN

SERVICES = ("thumbnail", "flvclipper", "raw")
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "avif", "tif", "tiff", "bmp", "mp4", "m4v", "mov",
                      "flv", "webm", "mkv", "m4a", "mp3", "aac", "wav", "ogg", "heic", "heif")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # processes sharing the port (SO_REUSEPORT); 0 = one per core
    access_log: bool = True
    log_format: str = "text"  # "text" or "json" (one JSON object per line)
    log_level: str = "info"
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For names the client
    shutdown_seconds: float = 5.0  # on SIGTERM, how long requests in flight may take to finish


@dataclass(frozen=True)
class OriginConfig:
    kind: str = "local"  # "local" or "http"
    root: Path | None = None  # for local
    url: str = ""  # for http: base URL; the only host mediaproxy ever fetches from
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # tried, in order, for original.{ext} / flavor_{id}.{ext}
    timeout_seconds: float = 10.0  # connect, and each wait for bytes, from the upstream
    deadline_seconds: float = 30.0  # the longest one upstream request (a block, a HEAD, entry.json) may take
    revalidate_seconds: float = 60.0  # how long what was learnt about an original is trusted unchecked
    not_found_seconds: float = 10.0  # how long "no such entry/file" is remembered
    block_bytes: int = 1_048_576  # http originals are read (and cached) in blocks of this size, by Range
    connections: int = 64  # upstream connections per worker at most
    connections_per_entry: int = 4  # of which one entry may hold at most this many (a slow one cannot starve)


@dataclass(frozen=True)
class CacheConfig:
    dir: Path = Path(".cache")
    originals_bytes: int = 10_000_000_000  # blocks of http originals
    results_bytes: int = 2_000_000_000  # rendered thumbnails, remuxed clips
    # 1: a rendered thumbnail is written to disk at its render (every worker of the node finds it there); 2: at its
    # second use in a worker, for traffic of URLs mostly asked once (their write would cost each of them CPU for
    # nothing, but a URL asked again on another worker is rendered again there)
    results_min_uses: int = 1
    index_bytes: int = 200_000_000  # built clip indexes
    results_memory_bytes: int = 192_000_000  # rendered thumbnails kept in each worker's memory
    originals_memory_bytes: int = 64_000_000  # hot small originals (images to decode) kept in each worker's memory
    memory_item_bytes: int = 12_000_000  # larger originals, results and decoded pictures are never held in memory
    decoded_bytes: int = 128_000_000  # decoded pictures of hot originals (other sizes skip decoding); 0 = none
    clip_index_memory_bytes: int = 64_000_000  # parsed indexes of videos that are clipped, per worker


@dataclass(frozen=True)
class LimitsConfig:
    max_original_bytes: int = 4_000_000_000
    max_source_pixels: int = 100_000_000
    max_output_pixels: int = 50_000_000
    request_seconds: float = 60.0  # the longest a request may take to produce its answer (then 504); 0 = no limit


@dataclass(frozen=True)
class ProcessingConfig:
    threads: int = 0  # CPU work threads per worker; 0 = the cores divided among the workers, at least 2
    queue: int = 64  # jobs waiting for a thread beyond which requests get 503
    queue_timeout_seconds: float = 10.0  # a job waiting longer than this for a thread is dropped (503); 0 = never


@dataclass(frozen=True)
class ThumbnailConfig:
    keep_animation: bool = False  # animated GIF/WebP sources stay animated in gif/webp outputs (Kaltura: 1st frame)
    animation_pixels: int = 25_000_000  # frames × the larger of source and output frame; past it, the first frame


@dataclass(frozen=True)
class VideoConfig:
    thumbnail_flavor: str = ""  # grab frames from this flavor when the entry has it (often smaller to decode)
    audio_placeholder: Path | None = None  # the picture of audio entries; None = the bundled one


@dataclass(frozen=True)
class HttpConfig:
    thumbnail_max_age: int = 3600
    raw_max_age: int = 8_640_000
    flvclipper_max_age: int = 8_640_000
    placeholder_max_age: int = 300  # the audio placeholder: short, so a real picture shows up soon
    error_max_age: int = 0  # errors: 0 = Cache-Control: no-store
    auto_format: bool = False  # thumbnails without `format` negotiate it from Accept, as format/auto does


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = False  # the test console at /
    entries_file: Path | None = None  # http origins: a file of "partner/entry" lines to list


@dataclass(frozen=True)
class NotificationsConfig:
    enabled: bool | None = None  # POST {path}; absent: on when a partner has admin secrets
    path: str = "/notifications"
    max_body_bytes: int = 1_000_000  # a larger POST is refused (413) before it is read
    remember_seconds: float = 7 * 86400  # how long notification ids (Kaltura retries) and purges are remembered


@dataclass(frozen=True)
class DefaultsConfig:
    partner_id: int = 100


@dataclass(frozen=True)
class PartnerConfig:
    admin_secrets: tuple[str, ...] = ()
    ks_required_for: tuple[str, ...] = ()
    quality: int = 0  # default thumbnail quality; 0 = options.DEFAULT_QUALITY (75)
    auto_format: bool | None = None  # None = the [http] value
    thumbnail_max_age: int = -1  # -1 = [http] value
    raw_max_age: int = -1
    flvclipper_max_age: int = -1


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    origin: OriginConfig = field(default_factory=OriginConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    thumbnail: ThumbnailConfig = field(default_factory=ThumbnailConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    partners: Mapping[int, PartnerConfig] = field(default_factory=dict)

    @property
    def worker_count(self) -> int:
        return self.server.workers or os.cpu_count() or 1

    @property
    def thread_count(self) -> int:
        """Work threads per worker: the cores divided among the workers, and at least two, so a worker's next job
        is ready to compute while it prepares and answers the last one, and a worker the kernel handed more than its
        share of connections (SO_REUSEPORT hashes them, e.g. 7 of 8 to one of two workers) can use a second core."""
        return self.processing.threads or max(2, (os.cpu_count() or 1) // self.worker_count)

    @property
    def notifications_on(self) -> bool:
        """Whether POST /notifications is served: as configured, else when some partner can sign."""
        enabled = self.notifications.enabled
        return enabled if enabled is not None else any(partner.admin_secrets for partner in self.partners.values())

    def partner(self, partner_id: int) -> PartnerConfig:
        return self.partners.get(partner_id, _PUBLIC_PARTNER)

    def auto_format(self, partner_id: int) -> bool:
        """Whether thumbnails of this partner without `format` negotiate it from Accept."""
        own = self.partner(partner_id).auto_format
        return self.http.auto_format if own is None else own

    def max_age(self, service: str, partner_id: int) -> int:
        own = getattr(self.partner(partner_id), f"{service}_max_age")
        return own if own >= 0 else getattr(self.http, f"{service}_max_age")


_PUBLIC_PARTNER = PartnerConfig()
_RESERVED_PATHS = ("/p/", "/s/", "/flvclipper", "/admin/", "/console/", "/healthz", "/metrics", "/explain")
_SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items()
                              if name != "partners"}


def load(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (or only defaults when path is None), apply environment overrides, validate."""
    environ = os.environ if environ is None else environ
    raw: dict = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base_dir = path.resolve().parent
    _apply_environment(raw, environ)
    config = _build_config(raw, base_dir)
    _check(config)
    return config


def _build_config(raw: dict, base_dir: Path) -> Config:
    sections = {}
    for name, table in raw.items():
        if name == "partners":
            continue
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join([*_SECTIONS, 'partners'])})")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build_section(_SECTIONS[name], table, name, base_dir)
    partners = {}
    partner_tables = raw.get("partners", {})
    if not isinstance(partner_tables, dict):
        raise ConfigError("[partners] must hold tables like [partners.100]")
    for key, table in partner_tables.items():
        try:
            partner_id = int(key)
        except ValueError:
            raise ConfigError(f"[partners.{key}]: the partner id must be an integer") from None
        if not isinstance(table, dict):
            raise ConfigError(f"[partners.{key}] must be a table")
        partners[partner_id] = _build_section(PartnerConfig, table, f"partners.{key}", base_dir)
    return Config(**sections, partners=partners)


def _build_section(cls: type, table: dict, where: str, base_dir: Path):
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            if (where, key) == ("cache", "disk_bytes"):
                raise ConfigError("[cache] disk_bytes is now split: originals_bytes (blocks of http originals), "
                                  "results_bytes (thumbnails, clips) and index_bytes (clip indexes)")
            if (where, key) == ("cache", "memory_bytes"):
                raise ConfigError("[cache] memory_bytes is now split: results_memory_bytes (rendered thumbnails) and "
                                  "originals_memory_bytes (hot small originals)")
            if (where, key) == ("processing", "clip_processes"):
                raise ConfigError("[processing] clip_processes is gone: clips are cut by rewriting their index "
                                  "(no process needed); the remux fallback runs on the work threads")
            known = ", ".join(hints)
            raise ConfigError(f"[{where}] unknown key {key!r} (known: {known})")
        values[key] = _coerce(hints[key], value, f"[{where}] {key}", base_dir)
    return cls(**values)


def _coerce(hint, value, where: str, base_dir: Path):
    """Check `value` (from TOML) against the field's type; paths become absolute against the config's folder."""
    if isinstance(hint, types.UnionType):  # `Path | None`
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a path (a non-empty string)")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where} must be a list of strings")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where} must be {_type_name(hint)}, not {type(value).__name__} {value!r}")
    return value


def _type_name(hint) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _apply_environment(raw: dict, environ: Mapping[str, str]) -> None:
    """Fold MEDIAPROXY_* variables into the raw TOML tree, parsed to the type each key declares."""
    shortcuts = {"MEDIAPROXY_PORT": ("server", "port"), "MEDIAPROXY_HOST": ("server", "host")}
    for name, text in environ.items():
        if not name.startswith("MEDIAPROXY_") or name == "MEDIAPROXY_CONFIG":
            continue
        if name in shortcuts:
            section, key = shortcuts[name]
            raw.setdefault(section, {})[key] = _parse_env(_SECTIONS[section], key, text, name)
            continue
        rest = name.removeprefix("MEDIAPROXY_").lower()
        if rest.startswith("partner_"):
            partner_id, _, key = rest.removeprefix("partner_").partition("_")
            if partner_id.isdigit() and key:
                table = raw.setdefault("partners", {}).setdefault(partner_id, {})
                table[key] = _parse_env(PartnerConfig, key, text, name)
            continue
        for section, cls in _SECTIONS.items():
            if rest.startswith(section + "_"):
                key = rest.removeprefix(section + "_")
                raw.setdefault(section, {})[key] = _parse_env(cls, key, text, name)
                break


def _parse_env(cls: type, key: str, text: str, name: str):
    hints = typing.get_type_hints(cls)
    if key not in hints:
        raise ConfigError(f"environment variable {name}: {cls.__name__} has no key {key!r}")
    hint = hints[key]
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    try:
        if hint is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        if hint in (int, float):
            return hint(text)
        if typing.get_origin(hint) is tuple:
            return [item.strip() for item in text.split(",") if item.strip()]
        return text
    except ValueError:
        raise ConfigError(f"environment variable {name}: {text!r} is not {_type_name(hint)}") from None


def _check(config: Config) -> None:
    origin = config.origin
    if origin.kind == "local":
        if origin.root is None:
            raise ConfigError("[origin] kind = \"local\" needs root = \"<folder of originals>\"")
        if not origin.root.is_dir():
            raise ConfigError(f"[origin] root {str(origin.root)!r} is not a folder")
    elif origin.kind == "http":
        if not origin.url.startswith(("http://", "https://")):
            raise ConfigError("[origin] kind = \"http\" needs url = \"http(s)://host/base\"")
    else:
        raise ConfigError(f"[origin] kind must be \"local\" or \"http\", not {origin.kind!r}")
    if not all(ext.isalnum() for ext in origin.extensions):
        raise ConfigError("[origin] extensions must be plain extensions like \"jpg\" (no dots)")
    if origin.timeout_seconds <= 0:
        raise ConfigError("[origin] timeout_seconds must be above 0")
    if not 0 <= config.server.port <= 65535:
        raise ConfigError(f"[server] port {config.server.port} is not a TCP port")
    if config.server.workers < 0:
        raise ConfigError("[server] workers must be 0 (one per core) or more")
    if config.server.log_format not in ("text", "json"):
        raise ConfigError(f"[server] log_format must be \"text\" or \"json\", not {config.server.log_format!r}")
    if config.server.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("[server] log_level must be debug, info, warning or error")
    for proxy in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"[server] trusted_proxies: {proxy!r} is not an IP address or network") from None
    if min(config.processing.threads, config.processing.queue) < 0:
        raise ConfigError("[processing] threads and queue must be 0 or more")
    flavor = config.video.thumbnail_flavor
    if flavor and not ID_PATTERN.match(flavor):
        raise ConfigError(f"[video] thumbnail_flavor {flavor!r} is not a flavor id")
    if config.console.entries_file is not None and not config.console.entries_file.is_file():
        raise ConfigError(f"[console] entries_file {str(config.console.entries_file)!r} is not a file")
    placeholder = config.video.audio_placeholder
    if placeholder is not None and not placeholder.is_file():
        raise ConfigError(f"[video] audio_placeholder {str(placeholder)!r} is not a file")
    if config.thumbnail.animation_pixels < 0:
        raise ConfigError("[thumbnail] animation_pixels must be 0 or more")
    if origin.block_bytes < 4096:
        raise ConfigError("[origin] block_bytes must be at least 4096")
    if origin.deadline_seconds <= 0 or origin.connections < 1 or origin.connections_per_entry < 1:
        raise ConfigError("[origin] deadline_seconds, connections and connections_per_entry must be above 0")
    for name in ("originals_bytes", "results_bytes", "index_bytes", "results_memory_bytes", "originals_memory_bytes",
                 "memory_item_bytes",
                 "decoded_bytes", "clip_index_memory_bytes"):
        if getattr(config.cache, name) < 0:
            raise ConfigError(f"[cache] {name} must be 0 or more")
    if config.cache.results_min_uses not in (1, 2):
        raise ConfigError("[cache] results_min_uses must be 1 (every render is written to disk) or 2 (at its "
                          "second use)")
    notifications = config.notifications
    if not notifications.path.startswith("/") or notifications.path.startswith(_RESERVED_PATHS) or any(
            char in notifications.path for char in "?#% "):
        raise ConfigError(f"[notifications] path {notifications.path!r} must be a plain path of its own, like "
                          "\"/notifications\" (not under /p/, /s/, /flvclipper/, /admin/, /console/)")
    if notifications.max_body_bytes < 1024 or notifications.remember_seconds <= 0:
        raise ConfigError("[notifications] max_body_bytes must be at least 1024 and remember_seconds above 0")
    for partner_id, partner in config.partners.items():
        unknown = set(partner.ks_required_for) - set(SERVICES)
        if unknown:
            raise ConfigError(f"[partners.{partner_id}] ks_required_for: unknown service {sorted(unknown)[0]!r} "
                              f"(services: {', '.join(SERVICES)})")
        if partner.ks_required_for and not partner.admin_secrets:
            raise ConfigError(f"[partners.{partner_id}] requires a KS but has no admin_secrets")
        if not 0 <= partner.quality <= 100:
            raise ConfigError(f"[partners.{partner_id}] quality must be 0..100")
