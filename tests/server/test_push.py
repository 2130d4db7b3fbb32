"""The push notifier on its own: who hears a batch, and when nobody needs to."""

from __future__ import annotations

from typing import Any

import msgpack

from topgun.core.records import LWWRecord, Timestamp
from topgun.server.changes import Change, ChangeSource, Origin
from topgun.server.handlers.acl import AllowAll
from topgun.server.handlers.push import PushNotifier


class Ctx:
    """The part of a RequestContext the notifier uses."""

    def __init__(self, cid: int) -> None:
        self.connection_id = cid
        self.data: dict[str, Any] = {}
        self.closed = False
        self.frames: list[dict[str, Any]] = []
        self.roles: tuple[str, ...] = ()

    def add_cleanup(self, hook: Any) -> None:
        pass

    def send_frame(self, data: bytes) -> None:
        self.frames.append(msgpack.unpackb(data))


def _put(name: str, key: str, n: int) -> Change:
    return Change.put(name, key, LWWRecord(n, Timestamp(1_700_000_000_000, n, "n1")))


def test_a_batch_reaches_every_interested_connection_but_its_writer() -> None:
    push = PushNotifier(AllowAll())
    writer, reader, other = Ctx(1), Ctx(2), Ctx(3)
    for ctx in (writer, reader):
        push.add_interest(ctx, "m")
    push.add_interest(other, "x")
    batch = [_put("m", f"k{i}", i) for i in range(3)] + [_put("x", "k", 9)]
    push.on_changes(batch, Origin(ChangeSource.CLIENT, 1))
    assert writer.frames == []
    [frame] = reader.frames
    assert frame["type"] == "SERVER_BATCH_EVENT"
    assert [e["key"] for e in frame["payload"]["events"]] == ["k0", "k1", "k2"]
    assert [f["payload"]["key"] for f in other.frames] == ["k"]
    assert push.frames_sent == 2


def test_a_batch_only_its_writer_watches_sends_nothing() -> None:
    push = PushNotifier(AllowAll())
    writer = Ctx(1)
    push.add_interest(writer, "m")
    push.on_changes([_put("m", f"k{i}", i) for i in range(50)], Origin(ChangeSource.CLIENT, 1))
    push.on_changes([_put("m", f"k{i}", i) for i in range(50)] + [_put("nobody", "k", 1)],
                    Origin(ChangeSource.CLIENT, 1))
    assert writer.frames == [] and push.frames_sent == 0
    # The same batch from another origin (a server-side change) does reach the writer.
    push.on_changes([_put("m", "k0", 7), _put("m", "k1", 8)], Origin(ChangeSource.SERVER, None))
    assert [e["key"] for e in writer.frames[0]["payload"]["events"]] == ["k0", "k1"]
