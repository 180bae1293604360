"""A purge reaches the clip service's memories too (SPEC §8): the parsed index and the layouts of a video's clips.
An MP4 rewritten in place with the same size and mtime keeps its identity; after a notification its clips are cut
from the new bytes (a stale index would send the new file's bytes at the old file's offsets)."""

from __future__ import annotations

import os
import shutil

from mediaproxy.app import make_app

from .conftest import FIXTURE_MEDIA, make_config
from .test_notifications import ORIGIN, PARTNERS, SECRET_A, post, single

CLIP = "/p/100/sp/10000/flvclipper/entry_id/0_clip/clip_from/1000/clip_to/3000"


def same_size(first: bytes, second: bytes) -> bytes:
    """`second`, grown to the size of `first` with a trailing `free` box (MP4 readers skip it)."""
    padding = len(first) - len(second)
    assert padding >= 8
    return second + padding.to_bytes(4, "big") + b"free" + b"\0" * (padding - 8)


async def test_a_purge_drops_clip_indexes_and_layouts_of_an_original_rewritten_in_place(serve, aiohttp_client,
                                                                                      tmp_path):
    root = tmp_path / "media"
    shutil.copytree(FIXTURE_MEDIA, root)
    old = (FIXTURE_MEDIA / "100/0_video/original.mp4").read_bytes()
    new = same_size(old, (FIXTURE_MEDIA / "100/0_video/flavor_0_small.mp4").read_bytes())
    (root / "100/0_clip").mkdir()
    path = root / "100/0_clip/original.mp4"
    path.write_bytes(old)
    client = await serve(make_config(tmp_path, ORIGIN.format(root=root), PARTNERS))
    before = await (await client.get(CLIP)).read()
    stat = path.stat()
    with open(path, "r+b") as file:  # same inode, size and mtime: the same identity
        file.write(new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (await post(client, single(SECRET_A, "entry_update", "0_clip")))[0] == 200
    after = await (await client.get(CLIP)).read()

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = await aiohttp_client(make_app(make_config(fresh_dir, ORIGIN.format(root=root), PARTNERS)))
    expected = await (await fresh.get(CLIP)).read()
    assert after == expected != before
