"""The thumbnail vocabulary (mediaproxy/options.py) between the URL grammar and media: media renders from options
alone and imports neither urls nor config; the cache key a request makes of them stays what it has always been."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from mediaproxy import urls
from mediaproxy.config import LimitsConfig
from mediaproxy.media.video import DEFAULT_MAX_PIXELS
from mediaproxy.options import OutputFormat, ThumbnailOptions
from mediaproxy.urls import ThumbnailRequest, parse

MEDIA = Path(urls.__file__).parent / "media"
EVERYTHING = ("/p/100/sp/10000/thumbnail/entry_id/0_abc/width/320!/height/240/bgcolor/ff0000/src_x/1/src_y/2/src_w/30"
              "/src_h/40/rel_width/400/rel_height/300/vid_slices/4/vid_slice/1/start_sec/1.5/end_sec/9/density/72"
              "/strip/1/format/webp/version/3/flavor_id/0_fl/quality/80/file_name/x.jpg")


def imported_modules(path: Path) -> set[str]:
    """The mediaproxy modules a file imports, as absolute names (`mediaproxy.urls`)."""
    package = "mediaproxy." + ".".join(path.relative_to(MEDIA.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_media_imports_neither_urls_nor_config():
    files = sorted(MEDIA.glob("*.py"))
    assert files
    for path in files:
        imported = imported_modules(path)
        assert not imported & {"mediaproxy.urls", "mediaproxy.config"}, path.name


def test_medias_default_pixel_limit_is_the_configured_default():
    assert DEFAULT_MAX_PIXELS == LimitsConfig.max_source_pixels


def test_cache_keys_are_those_results_on_disk_were_stored_under():
    assert parse(EVERYTHING, 100).cache_key() == (
        "thumbnail|entry=EntryRef(partner_id=100, entry_id='0_abc')|width=320|height=240|"
        "mode=<ResizeMode.STRETCH: 5>|bgcolor=16711680|region=Region(x=1, y=2, width=30, height=40)|rel_width=400|"
        "rel_height=300|vid_sec=None|vid_slices=4|vid_slice=1|start_sec=1.5|end_sec=9.0|density=72|strip=True|"
        "format=<OutputFormat.WEBP: 'webp'>|version=3|flavor_id='0_fl'")
    assert parse("/p/100/thumbnail/entry_id/0_abc", 100).cache_key() == (
        "thumbnail|entry=EntryRef(partner_id=100, entry_id='0_abc')|width=120|height=90|mode=<ResizeMode.FIT: 1>|"
        "bgcolor=16777215|region=Region(x=0, y=0, width=0, height=0)|rel_width=None|rel_height=None|vid_sec=None|"
        "vid_slices=None|vid_slice=None|start_sec=None|end_sec=None|density=None|strip=False|"
        "format=<OutputFormat.JPG: 'jpg'>|version=None|flavor_id=None")


def test_every_parameter_of_the_picture_but_quality_is_in_the_cache_key():
    compared = {field.name for field in dataclasses.fields(ThumbnailRequest) if field.compare}
    picture = {field.name for field in dataclasses.fields(ThumbnailOptions)}
    assert set(urls._THUMBNAIL_KEY_PARTS) == (compared - {"options", "quality"}) | picture


def test_the_request_reads_the_pictures_parameters_through_to_its_options():
    request = parse(EVERYTHING, 100)
    for field in dataclasses.fields(ThumbnailOptions):
        assert getattr(request, field.name) == getattr(request.options, field.name), field.name
    assert request.options == ThumbnailOptions(320, 240, request.mode, 0xFF0000, request.region, 400, 300, 72, True,
                                               OutputFormat.WEBP)


def test_in_format_changes_the_format_alone():
    request = parse(EVERYTHING, 100)
    negotiated = request.in_format(OutputFormat.AVIF)
    assert negotiated.format is OutputFormat.AVIF and negotiated.options.format is OutputFormat.AVIF
    assert dataclasses.replace(negotiated.options, format=OutputFormat.WEBP) == request.options
    assert dataclasses.replace(negotiated, options=request.options) == request
    assert (negotiated.file_name, negotiated.format_given) == (request.file_name, request.format_given)
