"""The purge log of a node (purge.py, cache/index.py): two `Purges` on one cache directory are two workers. What
one purges, the other applies at its next look, exactly once; the generation file is only a hint (torn,
out-of-order or stale values never lose a purge); a worker left behind by a trimmed log forgets everything.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

from mediaproxy.cache.disk import DiskCache
from mediaproxy.purge import BLOCKED, DELETED, GENERATION_FILE, KEEP, Purges
from mediaproxy.refs import EntryRef, Purged

PHOTO, OTHER, LOOKALIKE = EntryRef(100, "0_ab"), EntryRef(100, "0_zz"), EntryRef(100, "0_abc")


class Told:
    """A worker's memory cache: records what it is told to forget."""

    def __init__(self) -> None:
        self.told: list[Purged] = []

    def forget_purged(self, purged: Purged) -> None:
        self.told.append(purged)


async def worker(root, remember_seconds: float = 3600.0) -> tuple[Purges, DiskCache, Told]:
    disk = DiskCache(root, {"originals": 10**9, "results": 10**9, "indexes": 10**9})
    await disk.start()
    purges = Purges(disk, remember_seconds)
    told = Told()
    purges.register(told)
    await purges.start()
    return purges, disk, told


async def stop(*workers) -> None:
    for purges, disk, _ in workers:
        purges.close()
        await disk.close()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "cache"


async def test_what_one_worker_purges_the_other_applies_once(root):
    first, second = await worker(root), await worker(root)
    outcome = await first[0].purge(PHOTO, source="operator")
    assert outcome is not None and outcome.generation == 1
    assert [purged.refs for purged in first[2].told] == [frozenset({PHOTO})]  # the purging worker too
    assert second[2].told == []
    await second[0].catch_up()
    await second[0].catch_up()
    assert [purged.refs for purged in second[2].told] == [frozenset({PHOTO})]
    await first[0].purge(OTHER)
    await first[0].purge(PHOTO)
    await second[0].catch_up()
    assert second[2].told[-1].refs == frozenset({PHOTO, OTHER}) and len(second[2].told) == 2  # one batch
    await stop(first, second)


async def test_nothing_moved_costs_no_query(root, monkeypatch):
    purges, disk, told = await worker(root)
    asked = []
    monkeypatch.setattr(disk, "purges_since", lambda generation: asked.append(generation))
    started = time.perf_counter()
    for _ in range(20_000):
        await purges.catch_up()
    per_call = (time.perf_counter() - started) / 20_000
    assert asked == [] and per_call < 50e-6, per_call  # a read of shared memory (~1 µs), not a query
    await stop((purges, disk, told))


async def test_the_generation_file_is_only_a_hint(root):
    """Torn, stale or out-of-order values make a worker ask the index again; they never lose a purge."""
    first, second = await worker(root), await worker(root)
    fd = os.open(root / GENERATION_FILE, os.O_RDWR)
    try:
        await first[0].purge(PHOTO)
        os.pwrite(fd, struct.pack("<Q", 0xFFFF_0000_0000_0001), 0)  # torn: a value no purge has
        await second[0].catch_up()
        assert [purged.refs for purged in second[2].told] == [frozenset({PHOTO})]
        await first[0].purge(OTHER)
        os.pwrite(fd, struct.pack("<Q", 1), 0)  # an older purger wrote last (out of order)
        await second[0].catch_up()
        assert second[2].told[-1].refs == frozenset({OTHER})
        os.pwrite(fd, struct.pack("<Q", 2), 0)
        await second[0].catch_up()
        assert len(second[2].told) == 2  # nothing new: nothing told again
        await first[0].purge(PHOTO)  # two purgers whose writes land out of order: 4 then 3
        await first[0].purge(OTHER)
        os.pwrite(fd, struct.pack("<Q", 3), 0)
        await second[0].catch_up()
        assert second[2].told[-1].refs == frozenset({PHOTO, OTHER}) and not second[2].told[-1].everything
    finally:
        os.close(fd)
    await stop(first, second)


async def test_a_worker_left_behind_by_a_trimmed_log_forgets_everything(root):
    first, second = await worker(root, remember_seconds=0.05), await worker(root, remember_seconds=0.05)
    await first[0].purge(PHOTO, withhold=DELETED)
    await first[0].purge(OTHER)
    time.sleep(0.1)  # the rows age past remember_seconds: the next purge trims them
    await first[0].purge(LOOKALIKE)
    await second[0].catch_up()
    assert second[2].told[-1].everything
    assert second[0].withheld == {PHOTO: DELETED}  # read again from the index, whole
    await stop(first, second)


async def test_a_recreated_index_makes_every_worker_forget_everything(root):
    first, second = await worker(root), await worker(root)
    for _ in range(3):
        await first[0].purge(PHOTO)
    await second[0].catch_up()
    await stop(first)
    for suffix in ("", "-wal", "-shm"):  # what SharedIndex does with a damaged database
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    second[1].index.close()
    first = await worker(root)
    await first[0].purge(OTHER, withhold=DELETED)  # generation 1 of the new index
    await second[0].catch_up()
    assert second[2].told[-1].everything and second[0].withheld == {OTHER: DELETED}
    await stop(first, second)


async def test_withheld_state_follows_purges_and_survives_a_restart(root):
    first, second = await worker(root), await worker(root)
    assert (await first[0].purge(PHOTO, withhold=BLOCKED)).withheld == BLOCKED
    kept = await first[0].purge(PHOTO, withhold=KEEP)
    assert (kept.withheld_before, kept.withheld) == (BLOCKED, BLOCKED)
    await second[0].catch_up()
    assert second[0].withheld == {PHOTO: BLOCKED}
    await stop(first, second)
    restarted = await worker(root)
    assert restarted[0].withheld == {PHOTO: BLOCKED}
    released = await restarted[0].purge(PHOTO, withhold=None)
    assert (released.withheld_before, released.withheld) == (BLOCKED, None) and restarted[0].withheld == {}
    await stop(restarted)


async def test_a_once_key_purges_once_for_the_whole_node(root):
    first, second = await worker(root), await worker(root)
    assert await first[0].purge(PHOTO, once="notification|100|77") is not None
    assert await second[0].purge(PHOTO, once="notification|100|77") is None
    assert await second[0].purge(PHOTO, once="notification|200|77") is not None
    await stop(first, second)


async def test_a_purge_drops_the_entrys_files_and_located_facts_and_no_others(root):
    purges, disk, told = await worker(root)
    owners = {"100/0_ab/original.jpg|id1": "results", "100/0_ab/flavor_x.mp4|id2": "indexes",
              "100/0_abc/original.jpg|id3": "results", "10/0_ab/original.jpg|id4": "results",
              "1000/0_ab/original.jpg|id5": "originals"}
    for owner, namespace in owners.items():
        await disk.write(namespace, [(f"key of {owner}", b"body", {})], owner=owner)
    await disk.remember_located("100/0_ab/None|None|None", {"missing": "entry", "message": "m"}, time.time())
    await disk.remember_located("100/0_abc/None|None|None", {"missing": "entry", "message": "m"}, time.time())
    outcome = await purges.purge(PHOTO)
    assert dict(outcome.dropped) == {"results": 1, "indexes": 1} and outcome.located == 1
    for owner, namespace in owners.items():
        kept = await disk.read(namespace, f"key of {owner}")
        assert (kept is None) == owner.startswith("100/0_ab/"), owner
    assert await disk.located("100/0_ab/None|None|None") is None
    assert await disk.located("100/0_abc/None|None|None") is not None
    await stop((purges, disk, told))


def test_purged_says_which_keys_belong_to_its_entries():
    purged = Purged(frozenset({PHOTO}))
    assert purged.holds(PHOTO) and not purged.holds(LOOKALIKE)
    assert purged.owns("100/0_ab/original.jpg|x") and not purged.owns("100/0_abc/original.jpg|x")
    assert not purged.owns("10/0_ab/original.jpg|x")
    assert Purged(everything=True).owns("anything") and Purged(everything=True).holds(OTHER)


def test_entry_keys_drop_an_entrys_keys_without_scanning_and_stay_bounded():
    from cachetools import LRUCache, TTLCache

    from mediaproxy.cache.memory import EntryKeys

    memo: TTLCache = TTLCache(maxsize=100_000, ttl=3600)
    keys = EntryKeys(memo, lambda key: key[0].prefix)
    for index in range(100_000):
        memo[(EntryRef(100, f"0_e{index}"), None)] = index
        keys.added((EntryRef(100, f"0_e{index}"), None))
    started = time.perf_counter()
    assert keys.forget(Purged(frozenset({EntryRef(100, "0_e5"), EntryRef(100, "0_e99999"), OTHER}))) == 2
    assert time.perf_counter() - started < 0.005  # a scan of this memo takes ~100 ms
    assert len(memo) == 99_998 and (EntryRef(100, "0_e6"), None) in memo

    small: LRUCache = LRUCache(maxsize=10)  # evicting on its own: the index is rebuilt, never grows past ~2x
    index_of_small = EntryKeys(small, lambda key: key)
    for index in range(10_000):
        small[f"100/0_{index}/"] = index
        index_of_small.added(f"100/0_{index}/")
    assert index_of_small._count <= 2 * len(small) + 1024 + 1
    assert index_of_small.forget(Purged(frozenset({EntryRef(100, "0_9999")}))) == 1
    assert index_of_small.forget(Purged(everything=True)) == 9 and len(small) == 0
