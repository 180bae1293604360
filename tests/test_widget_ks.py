"""Widget sessions and `limitentry` (SPEC §5), every combination of privileges against every service.

A widget session is what every embedded Kaltura player sends (startWidgetSession): a user KS (type 0) of no user
whose privileges hold `widget:1`, usually `view:*,widget:1`. `view:*` / `view:{entry}` allow thumbnail and
flvclipper of that entry in a widget session, never raw; `limitentry:{entry}` limits any KS to that entry. The
expected answer of each request comes from `allowed()` below, written from SPEC §5's text; the KSs are made by
test_access's independent maker, or by `mediaproxy ks --widget`.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
import os
import subprocess
import sys

import pytest

from .conftest import REPO
from .test_access import (SECRET_A, SECRET_B, assert_allowed, assert_denied, fetch, independent_parse, make,
                          start)  # noqa: F401 - start is a fixture

REQUESTS = {  # name → (target, service, entry)
    "thumbnail photo": ("/p/100/sp/10000/thumbnail/entry_id/0_photo/width/48", "thumbnail", "0_photo"),
    "thumbnail video": ("/p/100/sp/10000/thumbnail/entry_id/0_video/width/48", "thumbnail", "0_video"),
    "clip video": ("/p/100/sp/10000/flvclipper/entry_id/0_video", "flvclipper", "0_video"),
    "raw photo": ("/p/100/sp/10000/raw/entry_id/0_photo", "raw", "0_photo"),
    "raw video": ("/p/100/sp/10000/raw/entry_id/0_video", "raw", "0_video"),
}
WIDGET = ["", "widget:1", "widget:0"]
VIEW = ["", "view:*", "view:0_photo", "view:0_video"]
LIMIT = ["", "limitentry:0_photo", "limitentry:0_video"]
OTHER = ["", "sview:0_video", "download:*"]
USERS = ["", "player-7"]


def allowed(privileges: list[str], type: int, user: str, service: str, entry: str) -> bool:
    """SPEC §5, read literally."""
    pairs = [item.partition(":")[::2] for item in privileges]

    def values(name: str) -> list[str]:
        return [value for key, value in pairs if key == name]

    def grants(name: str) -> bool:
        return any(value in ("*", entry) for value in values(name))

    if values("limitentry") and entry not in values("limitentry"):
        return False
    if type >= 1:
        return True
    widget = type == 0 and not user and "1" in values("widget")
    if service == "raw":
        return grants("sview") or grants("download")
    return grants("sview") or widget and grants("view")


def combinations(widget: str, view: str):
    """(privileges, type, user) for one widget and view privilege: users KSs with every limit, other privilege
    and user; admin KSs with every limit (an admin KS ignores the rest)."""
    for limit, other, user in itertools.product(LIMIT, OTHER, USERS):
        yield [item for item in (view, widget, limit, other) if item], 0, user
    for limit in LIMIT:
        yield [item for item in (view, widget, limit) if item], 2, ""


@pytest.mark.parametrize("widget", WIDGET)
@pytest.mark.parametrize("view", VIEW)
async def test_every_privilege_combination_against_every_service(start, widget, view):
    client = await start()
    for index, (privileges, type, user) in enumerate(combinations(widget, view)):
        version = ("v1", "v2")[index % 2]
        ks = make(version, 100, (SECRET_A, SECRET_B)[index % 2], privileges=",".join(privileges), type=type,
                  user=user)
        for name, (target, service, entry) in REQUESTS.items():
            result = await fetch(client, target, ks=ks, where=("path", "query", "header")[index % 3])
            case = f"{name} with {privileges} type {type} user {user!r}"
            if allowed(privileges, type, user, service, entry):
                assert result[0] == 200, case
                assert_allowed(result, service)
            else:
                assert result[0] == 403, case
                assert_denied(result, 3, ks=ks)


def test_spec_examples_of_the_oracle():
    """The oracle itself, on the cases SPEC §5 names."""
    widget = ["view:*", "widget:1"]
    assert allowed(widget, 0, "", "thumbnail", "0_a") and allowed(widget, 0, "", "flvclipper", "0_a")
    assert not allowed(widget, 0, "", "raw", "0_a")
    assert not allowed(widget, 0, "someone", "thumbnail", "0_a")  # a user's KS is no widget session
    assert not allowed(["view:*"], 0, "", "thumbnail", "0_a")  # view without widget:1 grants nothing
    assert not allowed([*widget, "limitentry:0_b"], 0, "", "thumbnail", "0_a")
    assert not allowed(["limitentry:0_b"], 2, "", "raw", "0_a") and allowed(["limitentry:0_a"], 2, "", "raw", "0_a")


def _ks_command(*args: str) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MEDIAPROXY_")}
    return subprocess.run([sys.executable, "-m", "mediaproxy", "ks", "--partner", "100", "--secret", SECRET_A,
                           *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60)


async def test_the_ks_command_makes_widget_sessions(start):
    with ThreadPoolExecutor(4) as commands:  # in parallel: each starts a Python
        plain, limited, v2, admin = commands.map(lambda args: _ks_command(*args), [
            ("--widget",), ("--widget", "--privileges", "limitentry:0_photo"), ("--widget", "--v2"),
            ("--widget", "--type", "2")])
    assert admin.returncode == 2 and "widget session" in admin.stderr
    kss = {}
    for name, done in (("plain", plain), ("limited", limited), ("v2", v2)):
        assert done.returncode == 0, done.stderr
        kss[name] = done.stdout.strip()
        parsed = independent_parse(kss[name], SECRET_A)
        assert (parsed["type"], parsed["user"], parsed["version"]) == (0, "", 2 if name == "v2" else 1)
    assert independent_parse(kss["plain"], SECRET_A)["privileges"] == [("view", "*"), ("widget", "1")]
    assert independent_parse(kss["limited"], SECRET_A)["privileges"] == [("view", "*"), ("widget", "1"),
                                                                         ("limitentry", "0_photo")]
    client = await start()
    for name in ("plain", "v2"):
        assert_allowed(await fetch(client, REQUESTS["thumbnail photo"][0], ks=kss[name]), "thumbnail")
        assert_allowed(await fetch(client, REQUESTS["clip video"][0], ks=kss[name]), "flvclipper")
        assert_denied(await fetch(client, REQUESTS["raw photo"][0], ks=kss[name]), 3, ks=kss[name])
    assert_allowed(await fetch(client, REQUESTS["thumbnail photo"][0], ks=kss["limited"]), "thumbnail")
    assert_denied(await fetch(client, REQUESTS["thumbnail video"][0], ks=kss["limited"]), 3, ks=kss["limited"])
