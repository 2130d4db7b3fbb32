"""The outbox of corked frames on both twins: the same sends give the same answers and writes.

Each example drives one outbox per twin through the same steps (sends with
slow-consumer bounds, pauses and resumes of writing, a closing transport,
drops, the end-of-iteration flush) and compares every answer, every write
(bytes and order), the flush scheduling and the outbox's state.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class _Server:
    def __init__(self) -> None:
        self._dirty: list[Any] = []


class _Underlying:
    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.buffered = 0
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append(("write", bytes(data)))

    def get_write_buffer_size(self) -> int:
        return self.buffered


def _outbox(twin: Any) -> tuple[Any, _Server, list[Any], _Underlying]:
    server = _Server()
    log: list[Any] = []
    box = twin.outbox.Outbox(server)
    ut = _Underlying(log)
    box.underlying = ut
    box.write_buffer_size = ut.get_write_buffer_size
    box.write_frame = lambda opcode, data: log.append(("frame", int(opcode), bytes(data)))
    box.schedule = lambda: log.append(("schedule",))
    box.high_water = 64
    box.accepting = True
    return box, server, log, ut


sizes = st.sampled_from([0, 1, 5, 125, 126, 300, 2047, 2048, 70_000])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), sizes, st.integers(0, 3_000), st.integers(0, 4)),
        st.tuples(st.just("plain-send"), sizes),
        st.tuples(st.sampled_from(["pause", "resume", "drop", "flush", "flush-all", "closing", "stop"])),
        st.tuples(st.just("buffered"), st.integers(0, 200)),
    ),
    max_size=25,
)


def _drive(twin: Any, script: list[tuple[Any, ...]]) -> dict[str, Any]:
    box, server, log, ut = _outbox(twin)
    answers = []
    for i, step in enumerate(script):
        kind = step[0]
        if kind == "send":
            data = bytes([i % 256]) * step[1]
            answers.append(box.send_bounded(data, step[2], step[3]))
        elif kind == "plain-send":
            box.send(bytes([i % 256]) * step[1])
        elif kind == "pause":
            box.paused = True
        elif kind == "resume":
            box.paused = False
            box.paused_frames = 0
        elif kind == "drop":
            box.drop()
        elif kind == "flush":
            box.flush()
        elif kind == "flush-all":
            twin.outbox.flush_all(server._dirty)
        elif kind == "closing":
            ut.closing = True
        elif kind == "stop":
            box.accepting = False
        else:
            ut.buffered = step[1]
        answers.append(box.outbound_bytes())
    return {
        "answers": answers,
        "log": log,
        "dirty": len(server._dirty),
        "state": (box.first, box.rest, box.out_bytes, box.paused, box.paused_frames, box.accepting),
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_outbox_twins_agree(pure: Any, compiled: Any, script: list[tuple[Any, ...]]) -> None:
    assert _drive(compiled, script) == _drive(pure, script)


def test_a_connections_frames_leave_in_one_write_in_order(twin: Any) -> None:
    box, server, log, _ut = _outbox(twin)
    assert box.send_bounded(b"a" * 10, 1_000, 10) is False
    assert box.send_bounded(b"b" * 130, 1_000, 10) is False
    box.send(b"c")
    assert log == [("schedule",)]  # one flush scheduled, nothing written yet
    twin.outbox.flush_all(server._dirty)
    assert server._dirty == []
    assert log[1:] == [("write", b"\x82\x0a" + b"a" * 10 + b"\x82\x7e\x00\x82" + b"b" * 130 + b"\x82\x01c")]
    assert box.send_bounded(b"d", 1_000, 10) is False
    twin.outbox.flush_all(server._dirty)
    assert log[-1] == ("frame", 2, b"d")  # a lone frame goes through the WebSocket transport


def test_bounds_are_answered_from_the_queue_and_the_buffer(twin: Any) -> None:
    box, _server, _log, ut = _outbox(twin)
    ut.buffered = 50
    assert box.send_bounded(b"x" * 100, 149, 5) is True  # 100 corked + 50 buffered > 149
    assert box.send_bounded(b"x", 1_000, 5) is False
    box.paused = True
    for _ in range(3):
        assert box.send_bounded(b"y", 10**6, 3) is False
    assert box.send_bounded(b"y", 10**6, 3) is True  # the fourth frame while paused
