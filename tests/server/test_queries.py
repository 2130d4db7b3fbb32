"""Live queries over real sockets (PROTOCOL §4.7, §5.11): QUERY_SUB → QUERY_RESP, QUERY_UPDATE
ENTER/UPDATE/LEAVE, window displacement, writer exclusion, cursors, FORBIDDEN/INVALID_QUERY, and
Hypothesis-generated predicates/sorts/limits checked against a brute-force oracle — on every
storage backend (memory, SQLite, PostgreSQL), plus one run against a real ``topgun serve`` process."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from gridkit import batch, connect, now_ms, or_add, put, remove, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawclient import RawClient

from support.predicate_oracle import oracle_rows, predicates
from support.servers import eventually
from topgun.core.predicates import P

pytestmark = pytest.mark.timeout(120)


def sub_msg(
    qid: str, map_name: str, query: dict[str, Any], fields: list[str] | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"queryId": qid, "mapName": map_name, "query": query}
    if fields is not None:
        payload["fields"] = fields
    return {"type": "QUERY_SUB", "payload": payload}


async def recv_type(c: RawClient, kind: str, timeout: float = 3.0) -> dict[str, Any]:
    """Next message of ``kind``, skipping SERVER_EVENT pushes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        msg = await c.recv(timeout=max(left, 0.01))
        if msg["type"] == kind:
            return msg
        assert msg["type"] in ("SERVER_EVENT", "SERVER_BATCH_EVENT", "OP_ACK"), msg


async def updates(c: RawClient, n: int, timeout: float = 3.0) -> list[tuple[str, str, Any]]:
    out = []
    for _ in range(n):
        m = (await recv_type(c, "QUERY_UPDATE", timeout))["payload"]
        out.append((m["changeType"], m["key"], m["value"]))
    return out


async def no_updates(c: RawClient, duration: float = 0.3) -> None:
    try:
        while True:
            msg = await c.recv(timeout=duration)
            assert msg["type"] != "QUERY_UPDATE", msg
    except (asyncio.TimeoutError, TimeoutError):
        return


class Writer:
    def __init__(self, c: RawClient) -> None:
        self.c = c
        self.n = 0
        self.t = now_ms()

    async def put(self, m: str, key: str, value: Any) -> None:
        self.n += 1
        await self.c.send(batch(put(str(self.n), m, key, value, self.t, self.n)))
        await recv_type(self.c, "OP_ACK")

    async def remove(self, m: str, key: str) -> None:
        self.n += 1
        await self.c.send(batch(remove(str(self.n), m, key, self.t, self.n)))
        await recv_type(self.c, "OP_ACK")


async def test_snapshot_and_live_updates(storage_kind: str, storage_url: str) -> None:
    async with serving(storage_url) as server:
        w = Writer(await connect(server))
        await w.put("todos", "a", {"done": False, "prio": 3, "title": "A"})
        await w.put("todos", "b", {"done": True, "prio": 5, "title": "B"})
        await w.put("todos", "c", {"done": False, "prio": 1, "title": "C"})
        s = await connect(server)
        q = {"predicate": P.and_(P.eq("done", False), P.gt("prio", 0)),
             "sort": [{"field": "prio", "direction": "desc"}]}
        await s.send(sub_msg("q1", "todos", q, fields=["title", "prio"]))
        resp = (await recv_type(s, "QUERY_RESP"))["payload"]
        assert resp["queryId"] == "q1"
        assert resp["results"] == [{"key": "a", "value": {"title": "A", "prio": 3}},
                                   {"key": "c", "value": {"title": "C", "prio": 1}}]
        assert resp["cursorStatus"] == "none"
        assert resp.get("hasMore") is False
        await w.put("todos", "d", {"done": False, "prio": 9, "title": "D"})  # insert → ENTER
        assert await updates(s, 1) == [("ENTER", "d", {"title": "D", "prio": 9})]
        await w.put("todos", "a", {"done": False, "prio": 4, "title": "A2"})  # update → UPDATE
        assert await updates(s, 1) == [("UPDATE", "a", {"title": "A2", "prio": 4})]
        await w.put("todos", "c", {"done": True, "prio": 1, "title": "C"})  # no longer matches → LEAVE
        assert await updates(s, 1) == [("LEAVE", "c", None)]
        await w.remove("todos", "d")  # delete → LEAVE
        assert await updates(s, 1) == [("LEAVE", "d", None)]
        await w.put("todos", "b", {"done": True, "prio": 7})  # never matched
        await no_updates(s)
        # QUERY_UNSUB stops the updates
        await s.send({"type": "QUERY_UNSUB", "payload": {"queryId": "q1"}})
        await w.put("todos", "e", {"done": False, "prio": 2})
        await no_updates(s)
        await s.close()
        await w.c.close()


async def test_window_displacement_and_writer_exclusion(storage_kind: str, storage_url: str) -> None:
    async with serving(storage_url) as server:
        w = Writer(await connect(server))
        for i in range(5):
            await w.put("scores", f"p{i}", {"score": i * 10})
        s = await connect(server)
        q = {"sort": [{"field": "score", "direction": "desc"}], "limit": 2}
        await s.send(sub_msg("top", "scores", q))
        resp = (await recv_type(s, "QUERY_RESP"))["payload"]
        assert [r["key"] for r in resp["results"]] == ["p4", "p3"]
        assert resp["hasMore"] is True and isinstance(resp["nextCursor"], str)
        await w.put("scores", "new", {"score": 35})
        assert await updates(s, 2) == [("LEAVE", "p3", None), ("ENTER", "new", {"score": 35})]
        await w.remove("scores", "p4")  # refill from a remembered row
        assert await updates(s, 2) == [("LEAVE", "p4", None), ("ENTER", "p3", {"score": 30})]
        await w.put("scores", "low", {"score": 1})  # outside the window
        await no_updates(s)
        # the writer's own subscription is updated but not sent (§5.7 item 4)
        await w.c.send(sub_msg("mine", "scores", q))
        resp = (await recv_type(w.c, "QUERY_RESP"))["payload"]
        assert [r["key"] for r in resp["results"]] == ["new", "p3"]
        await w.put("scores", "top", {"score": 99})
        assert await updates(s, 2) == [("LEAVE", "p3", None), ("ENTER", "top", {"score": 99})]
        await no_updates(w.c)
        # another connection removes it: the writer's window knew about it, so it gets the LEAVE + refill
        await s.send(batch(remove("x1", "scores", "top", now_ms() + 10, 0, "client-b")))
        assert await updates(w.c, 2) == [("LEAVE", "top", None), ("ENTER", "p3", {"score": 30})]


async def test_cursor_pages_and_status(storage_kind: str, storage_url: str) -> None:
    async with serving(storage_url) as server:
        w = Writer(await connect(server))
        for i in range(7):
            await w.put("m", f"k{i}", {"n": i})
        c = w.c
        q: dict[str, Any] = {"sort": [{"field": "n", "direction": "asc"}], "limit": 3}
        keys: list[str] = []
        cursor = None
        statuses = []
        for page in range(5):
            await c.send(sub_msg(f"p{page}", "m", dict(q, cursor=cursor) if cursor else q))
            resp = (await recv_type(c, "QUERY_RESP"))["payload"]
            statuses.append(resp["cursorStatus"])
            keys += [r["key"] for r in resp["results"]]
            if not resp.get("hasMore"):
                assert "nextCursor" not in resp
                break
            cursor = resp["nextCursor"]
        assert keys == [f"k{i}" for i in range(7)]
        assert statuses == ["none", "valid", "valid"]
        await c.send(sub_msg("bad", "m", dict(q, cursor="garbage!")))
        resp = (await recv_type(c, "QUERY_RESP"))["payload"]
        assert resp["cursorStatus"] == "invalid" and [r["key"] for r in resp["results"]] == ["k0", "k1", "k2"]


async def test_forbidden_invalid_and_limit_clamp(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    acl = [{"map": "secret*", "read": [], "write": ["admin"]}]
    async with serving(url, map_acl=acl, extra={"query_max_rows": 3}) as server:
        w = Writer(await connect(server))
        for i in range(5):
            await w.put("pub", f"k{i}", {"n": i})
        c = w.c
        await c.send(sub_msg("s", "secret-stuff", {}))
        resp = (await recv_type(c, "QUERY_RESP"))["payload"]
        assert resp["code"] == "FORBIDDEN" and resp["results"] == [] and resp["error"]
        await c.send(sub_msg("r", "pub", {"predicate": P.regex("n", "(a)\\1")}))
        resp = (await recv_type(c, "QUERY_RESP"))["payload"]
        assert resp["code"] == "INVALID_QUERY" and resp["results"] == []
        await c.send(sub_msg("l", "pub", {"limit": 100}))
        resp = (await recv_type(c, "QUERY_RESP"))["payload"]
        assert len(resp["results"]) == 3 and resp["hasMore"] is True
        # TS map form of sort and payload-less fields inside query (§8 item 8)
        await c.send(sub_msg("ts", "pub", {"sort": {"n": "desc"}, "fields": ["n"], "limit": 2}))
        resp = (await recv_type(c, "QUERY_RESP"))["payload"]
        assert resp["results"] == [{"key": "k4", "value": {"n": 4}}, {"key": "k3", "value": {"n": 3}}]


async def test_group_by_over_the_wire() -> None:
    async with serving("memory://") as server:
        w = Writer(await connect(server))
        for i in range(6):
            await w.put("sales", f"s{i}", {"region": "north" if i % 2 else "south", "amount": i})
        await w.c.send(sub_msg("g", "sales", {"groupBy": ["region"],
                                              "aggregations": [{"func": "sum", "field": "amount"},
                                                               {"func": "count"}]}))
        resp = (await recv_type(w.c, "QUERY_RESP"))["payload"]
        got = {
            r["value"]["region"]: (r["value"]["__count"], r["value"]["__sum_amount"]) for r in resp["results"]
        }
        assert got == {"north": (3, 9), "south": (3, 6)}


# ---------------------------------------------------------------------------------------------
# Hypothesis against the oracle, through a real server (one server per test, reused by examples)

values = st.fixed_dictionaries({}, optional={
    "a": st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "ab", "b", "Ab"]), st.booleans(),
                   st.lists(st.sampled_from(["a", "b", 1]), max_size=2)),
    "b": st.one_of(st.integers(-3, 3), st.floats(-3, 3, allow_nan=False, allow_infinity=False),
                   st.sampled_from(["", "a", "ba"])),
    "c": st.fixed_dictionaries({"x": st.one_of(st.integers(0, 2), st.sampled_from(["a", "b"]))}),
})
sorts = st.lists(
    st.fixed_dictionaries({"field": st.sampled_from(["a", "b", "_key"]),
                           "direction": st.sampled_from(["asc", "desc"])}),
    max_size=2,
)
queries = st.fixed_dictionaries({}, optional={
    "where": st.dictionaries(st.sampled_from(["a", "b"]), st.integers(-1, 2), max_size=1),
    "predicate": predicates,
    "sort": sorts,
    "limit": st.integers(1, 6),
})
WIRE = settings(max_examples=int(os.environ.get("TOPGUN_QUERY_EXAMPLES", "40")), deadline=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_queries_match_oracle_over_the_wire(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from support.pg import StorageUrls, need_postgres

    if kind == "postgresql":
        need_postgres()
    url = StorageUrls(kind, tmp_path, request)()
    counter = {"n": 0}

    @WIRE
    @given(st.dictionaries(st.sampled_from([f"k{i}" for i in range(12)]), values, min_size=1, max_size=12),
           queries)
    def check(data: dict[str, Any], query: dict[str, Any]) -> None:
        counter["n"] += 1
        asyncio.run(run(data, query, f"m{counter['n']}"))

    async def run(data: dict[str, Any], query: dict[str, Any], map_name: str) -> None:
        async with serving(url) as server:
            w = Writer(await connect(server))
            ops = [put(str(i), map_name, k, v, w.t, i) for i, (k, v) in enumerate(data.items())]
            await w.c.send(batch(*ops))
            await recv_type(w.c, "OP_ACK")
            await w.c.send(sub_msg("q", map_name, query))
            resp = (await recv_type(w.c, "QUERY_RESP"))["payload"]
            expected = oracle_rows(data, query)
            limit = query.get("limit")
            page = expected[:limit] if limit else expected
            if "code" in resp:  # a refused regex in the generated tree
                assert resp["code"] == "INVALID_QUERY"
                return
            assert [(r["key"], r["value"]) for r in resp["results"]] == page
            assert resp.get("hasMore") is (len(expected) > len(page))
            # the cursor walks the rest of the order exactly
            walked = [r["key"] for r in resp["results"]]
            cursor = resp.get("nextCursor")
            while cursor:
                await w.c.send(sub_msg("q", map_name, dict(query, cursor=cursor)))
                r2 = (await recv_type(w.c, "QUERY_RESP"))["payload"]
                assert r2["cursorStatus"] == "valid"
                walked += [r["key"] for r in r2["results"]]
                cursor = r2.get("nextCursor")
            assert walked == [k for k, _ in expected]

    check()
    assert counter["n"] >= 10  # the examples really ran


# ---------------------------------------------------------------------------------------------
# A real `topgun serve` process


async def test_against_topgun_serve_process(tmp_path: Path) -> None:
    env = dict(os.environ, TOPGUN_NO_AUTH="1", PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "topgun", "serve", "--port", "0", "--storage", f"sqlite:///{tmp_path / 's.db'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        m = re.search(r"ws://([^ ]+)/ws", line)
        assert m, line
        url = f"ws://{m.group(1)}/ws"
        w = await RawClient.open(url)
        await w.send({"type": "AUTH", "token": "x"})
        assert (await w.recv())["type"] == "AUTH_ACK"
        s = await RawClient.open(url)
        await s.send({"type": "AUTH", "token": "x"})
        assert (await s.recv())["type"] == "AUTH_ACK"
        writer = Writer(w)
        await writer.put("todos", "a", {"prio": 1})
        await s.send(sub_msg("q", "todos", {"predicate": P.gte("prio", 1)}))
        resp = (await recv_type(s, "QUERY_RESP"))["payload"]
        assert resp["results"] == [{"key": "a", "value": {"prio": 1}}]
        await writer.put("todos", "b", {"prio": 5})
        assert await updates(s, 1) == [("ENTER", "b", {"prio": 5})]
        await w.close()
        await s.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


async def test_or_map_queries_are_empty_and_query_sub_makes_the_connection_interested() -> None:
    async with serving("memory://") as server:
        w = Writer(await connect(server))
        await w.c.send(batch(or_add("o1", "tags", "x", "red", w.t)))
        await recv_type(w.c, "OP_ACK")
        s = await connect(server)
        await s.send(sub_msg("q", "tags", {}))
        resp = (await recv_type(s, "QUERY_RESP"))["payload"]
        assert resp["results"] == [] and "code" not in resp
        # §5.7: QUERY_SUB on M makes the connection interested in M: it gets SERVER_EVENTs too
        await s.send(sub_msg("q2", "todos", {"where": {"x": 1}}))
        await recv_type(s, "QUERY_RESP")
        await w.put("todos", "k", {"x": 2})
        ev = await s.recv()
        assert ev["type"] == "SERVER_EVENT" and ev["payload"]["key"] == "k"
        await no_updates(s)


async def test_value_ref_auth_claims_and_role_acl() -> None:
    from rawclient import SECRET, make_token

    acl = {"default": "allow", "rules": [{"map": "hr*", "read": ["hr"], "write": ["hr"]}]}
    async with serving("memory://", jwt_secret=SECRET, map_acl=acl) as server:
        alice = await connect(server, make_token(sub="alice", roles=["staff"]))
        bob = await connect(server, make_token(sub="bob", roles=["hr"]))
        w = Writer(alice)
        await w.put("notes", "n1", {"owner": "alice", "text": "a"})
        await w.put("notes", "n2", {"owner": "bob", "text": "b"})
        mine = {"predicate": {"op": "eq", "attribute": "owner", "valueRef": "auth.sub"}}
        for c, who in ((alice, "n1"), (bob, "n2")):
            await c.send(sub_msg("mine", "notes", mine))
            resp = (await recv_type(c, "QUERY_RESP"))["payload"]
            assert [r["key"] for r in resp["results"]] == [who]
        await w.put("notes", "n3", {"owner": "bob", "text": "c"})
        assert await updates(bob, 1) == [("ENTER", "n3", {"owner": "bob", "text": "c"})]
        # the roles claim decides read permission
        await alice.send(sub_msg("hr", "hr-salaries", {}))
        assert (await recv_type(alice, "QUERY_RESP"))["payload"]["code"] == "FORBIDDEN"
        await bob.send(sub_msg("hr", "hr-salaries", {}))
        resp = (await recv_type(bob, "QUERY_RESP"))["payload"]
        assert "code" not in resp and resp["results"] == []


QIDS = ["", "q", "x" * 31, "x" * 32, "\u00e9" * 200, "y" * 300, "z" * 70_000, "\U0001f600 q"]
EVENTS = [
    ("k", {"t": 2**63 + 1, "s": "v", "n": None, "f": 1.5, "l": [1, -2, {"a": b"\x00"}]}, "UPDATE"),
    ("", None, "LEAVE"),
    ("key\u00e9" * 20, "x" * 70_000, "ENTER"),
    ("k2", {"big": list(range(40))}, "ENTER"),
]


def test_update_frames_are_the_codec_encoding(twin: Any) -> None:
    """Spliced QUERY_UPDATE frames (shared tail, per-subscription head) equal the codec's own
    encoding of the message, byte for byte, on both codec twins."""
    from topgun.protocol.messages import ChangeType, QueryUpdate
    from topgun.server.handlers.query import UpdateFrames

    frames = UpdateFrames(twin.codec.encode)
    assert frames.exact
    for qid in QIDS:
        head = frames.head(qid)
        for key, value, ct in EVENTS:
            change = ChangeType(ct)
            msg = QueryUpdate(query_id=qid, key=key, value=value, change_type=change)
            want = twin.codec.encode(msg)
            assert head + frames.tail(key, value, change) == want
            assert twin.codec.decode(want) == msg


async def test_one_window_many_subscribers_with_their_own_ids_and_fields() -> None:
    """Identical queries share a window and each tail is encoded once per projection; every
    subscriber still gets its own queryId and its own projection, and the writer none."""
    async with serving("memory://") as server:
        w = Writer(await connect(server))
        subs = [(await connect(server), qid, fields) for qid, fields in
                [("a", None), ("b" * 40, ["n"]), ("c", ["n"]), ("d", ["m", "n"]), ("e", None)]]
        for c, qid, fields in subs:
            await c.send(sub_msg(qid, "shared", {"where": {"g": 1}}, fields=fields))
            await recv_type(c, "QUERY_RESP")
        await w.c.send(sub_msg("w", "shared", {"where": {"g": 1}}))
        await recv_type(w.c, "QUERY_RESP")
        qs = server.processors.get("QUERY_SUB")
        assert qs is not None and qs.engine.windows() == 1
        await w.put("shared", "k", {"g": 1, "n": 5, "m": "x", "o": True})
        await w.put("shared", "k", {"g": 2})
        for c, qid, fields in subs:
            got = [(await recv_type(c, "QUERY_UPDATE"))["payload"] for _ in range(2)]
            value = {"g": 1, "n": 5, "m": "x", "o": True}
            if fields is not None:
                value = {f: value[f] for f in fields}
            assert got == [
                {"queryId": qid, "key": "k", "value": value, "changeType": "ENTER"},
                {"queryId": qid, "key": "k", "value": None, "changeType": "LEAVE"},
            ]
        await no_updates(w.c)
        for c, _, _ in subs:
            await c.close()
        await w.c.close()


async def test_members_joining_and_leaving_a_window_after_it_has_sent() -> None:
    """The sender caches what it needs per window member; every change of the members (a new
    subscriber, an unsubscribe, a re-subscribe with other fields, a closed connection) shows
    in the very next write."""
    async with serving("memory://") as server:
        w = Writer(await connect(server))
        a, b, c, d = [await connect(server) for _ in range(4)]
        q = {"where": {"g": 1}}
        qs = server.processors.get("QUERY_SUB")
        assert qs is not None
        step = 0

        async def write_and_expect(
            receivers: dict[Any, tuple[str, list[str] | None]], silent: list[Any]
        ) -> None:
            nonlocal step
            step += 1
            value = {"g": 1, "n": step, "m": "x"}
            sent = qs.updates_sent
            await w.put("m", f"k{step}", value)
            for conn, (qid, fields) in receivers.items():
                want = value if fields is None else {f: value[f] for f in fields}
                assert (await recv_type(conn, "QUERY_UPDATE"))["payload"] == {
                    "queryId": qid, "key": f"k{step}", "value": want, "changeType": "ENTER"}
            for conn in silent:
                await no_updates(conn)
            assert qs.updates_sent - sent == len(receivers)
            assert qs.engine.windows() == 1

        for conn, qid in ((a, "a"), (b, "b"), (d, "d")):
            await conn.send(sub_msg(qid, "m", q))
            await recv_type(conn, "QUERY_RESP")
        await write_and_expect({a: ("a", None), b: ("b", None), d: ("d", None)}, [c])
        await c.send(sub_msg("c", "m", q))  # joins
        assert len((await recv_type(c, "QUERY_RESP"))["payload"]["results"]) == 1
        await write_and_expect({a: ("a", None), b: ("b", None), c: ("c", None), d: ("d", None)}, [])
        await b.send({"type": "QUERY_UNSUB", "payload": {"queryId": "b"}})  # leaves
        await eventually(lambda: len(qs.engine) == 3)
        await write_and_expect({a: ("a", None), c: ("c", None), d: ("d", None)}, [b])
        await a.send(sub_msg("a", "m", q, fields=["n"]))  # the same window, now projected
        await recv_type(a, "QUERY_RESP")
        await write_and_expect({a: ("a", ["n"]), c: ("c", None), d: ("d", None)}, [b])
        await d.close()  # its connection goes
        await eventually(lambda: len(qs.engine) == 2)
        await write_and_expect({a: ("a", ["n"]), c: ("c", None)}, [b])
        for conn in (a, b, c):
            await conn.close()
        await w.c.close()


def test_update_frames_splice_only_where_the_layout_allows() -> None:
    import msgpack

    from topgun.protocol.messages import ChangeType, QueryUpdate
    from topgun.server.handlers.query import UpdateFrames

    def payload_first(msg: Any) -> bytes:  # the same fields, another order: no shared head
        p = {"key": msg.key, "queryId": msg.query_id, "value": msg.value, "changeType": msg.change_type.value}
        return bytes(msgpack.packb({"payload": p, "type": "QUERY_UPDATE"}))

    def id_last(msg: Any) -> bytes:
        p = {"key": msg.key, "value": msg.value, "changeType": msg.change_type.value, "queryId": msg.query_id}
        return bytes(msgpack.packb({"type": "QUERY_UPDATE", "payload": p}))

    def type_last(msg: Any) -> bytes:  # queryId still first in the payload: this one splices
        p = {"queryId": msg.query_id, "key": msg.key, "value": msg.value, "changeType": msg.change_type.value}
        return bytes(msgpack.packb({"payload": p, "type": "QUERY_UPDATE"}))

    assert not UpdateFrames(payload_first).exact
    assert not UpdateFrames(id_last).exact
    frames = UpdateFrames(type_last)
    assert frames.exact
    msg = QueryUpdate(query_id="q7", key="k", value={"a": 1}, change_type=ChangeType.ENTER)
    assert frames.head("q7") + frames.tail("k", {"a": 1}, ChangeType.ENTER) == type_last(msg)
