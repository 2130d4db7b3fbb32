"""``client.query(...)``: local evaluation (also offline), reconciliation with the server's
snapshot and updates, change callbacks and async iteration, re-subscription after a restart —
against in-process servers and real ``topgun serve`` processes on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import cmp_to_key
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.clients import connected, until
from support.predicate_oracle import o_cmp_sort, oracle_match, predicates
from topgun import P
from topgun.client import MemoryStorage, SQLiteStorage, TopGunClient
from topgun.client.query import QueryChange
from topgun.protocol.messages import ChangeType

pytestmark = pytest.mark.timeout(120)

def keys(q: Any) -> list[str]:
    return [k for k, _ in q.results]


async def test_offline_query_over_the_local_replica() -> None:
    c = TopGunClient("ws://127.0.0.1:9/ws", storage=MemoryStorage(), connect=False)
    await c.start()
    try:
        todos = c.get_map("todos")
        todos.set("a", {"done": False, "prio": 3})
        todos.set("b", {"done": True, "prio": 9})
        todos.set("c", {"done": False, "prio": 7})
        todos.set("d", {"done": False, "prio": 1})
        q = c.query("todos", predicate=P.and_(P.eq("done", False), P.gt("prio", 2)),
                    sort=[("prio", "desc")], limit=20)
        assert q.results == [("c", {"done": False, "prio": 7}), ("a", {"done": False, "prio": 3})]
        assert not q.settled
        seen: list[QueryChange] = []
        off = q.subscribe(seen.append)
        todos.set("e", {"done": False, "prio": 5})
        todos.remove("c")
        todos.set("a", {"done": False, "prio": 4})
        todos.set("d", {"done": False, "prio": 2.5})
        assert keys(q) == ["e", "a", "d"]
        assert [(ch.change_type, ch.key) for ch in seen] == [
            (ChangeType.ENTER, "e"), (ChangeType.LEAVE, "c"),
            (ChangeType.UPDATE, "a"), (ChangeType.ENTER, "d"),
        ]
        off()
        # where + limit + projection
        q2 = c.query("todos", where={"done": False}, sort=[("prio", "asc")], limit=2, fields=["prio"])
        assert q2.results == [("d", {"prio": 2.5}), ("a", {"prio": 4})]
        q.close()
        q2.close()
        assert q.closed
    finally:
        await c.close()


async def test_query_sees_other_clients_and_server_rows(mem_server: Any) -> None:
    a = await connected(mem_server.url)
    b = await connected(mem_server.url)
    try:
        for i in range(5):
            a.get_map("scores").set(f"p{i}", {"score": i * 10})
        await a.flush()
        q = b.query("scores", sort=[("score", "desc")], limit=3)
        await q.wait_settled()
        await until(lambda: keys(q) == ["p4", "p3", "p2"], what="snapshot")
        assert q.has_more is True and q.next_cursor
        changes: list[QueryChange] = []

        async def consume() -> None:
            async for ch in q:
                changes.append(ch)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        a.get_map("scores").set("x", {"score": 35})  # displaces p2
        await until(lambda: keys(q) == ["p4", "x", "p3"], what="displacement")
        a.get_map("scores").remove("p4")
        await until(lambda: keys(q) == ["x", "p3", "p2"], what="refill")
        b.get_map("scores").set("mine", {"score": 100})  # own write: evaluated locally at once
        assert keys(q)[0] == "mine"
        q.close()
        await asyncio.wait_for(task, 5)
        assert ChangeType.LEAVE in {c.change_type for c in changes}
        assert ("x", ChangeType.ENTER) in {(c.key, c.change_type) for c in changes}
    finally:
        await a.close()
        await b.close()


async def test_server_only_rows_and_server_errors(mem_server: Any) -> None:
    a = await connected(mem_server.url)
    b = await connected(mem_server.url)
    try:
        for i in range(4):
            a.get_map("sales").set(f"s{i}", {"region": "n" if i % 2 else "s", "amount": i})
        await a.flush()
        g = b.query("sales", group_by=["region"], aggregations=[("sum", "amount")])
        await g.wait_settled()
        assert {v["region"]: v["__sum_amount"] for _, v in g.results} == {"n": 4, "s": 2}
        bad = b.query("sales", predicate=P.regex("region", "(a)\\1"))
        await bad.wait_settled()
        assert bad.error is not None and bad.error.code == "INVALID_QUERY"
        # a cursor page is server-only too
        p1 = b.query("sales", sort=[("amount", "asc")], limit=2)
        await p1.wait_settled()
        p2 = b.query("sales", sort=[("amount", "asc")], limit=2, cursor=p1.next_cursor)
        await p2.wait_settled()
        assert keys(p2) == ["s2", "s3"] and p2.cursor_status == "valid"
    finally:
        await a.close()
        await b.close()


async def test_query_resubscribes_after_server_restart(server_process: Any, tmp_path: Any) -> None:
    sp = server_process()
    await sp.start()
    writer = await connected(sp.url)
    reader = await connected(sp.url, storage=SQLiteStorage(str(tmp_path / "reader.db")))
    try:
        writer.get_map("jobs").set("j1", {"state": "open", "n": 1})
        await writer.flush()
        q = reader.query("jobs", where={"state": "open"})
        await until(lambda: keys(q) == ["j1"], what="first result")
        await sp.kill()
        await until(lambda: not reader.connected, what="reader offline")
        # offline: local writes still show up
        reader.get_map("jobs").set("local", {"state": "open", "n": 0})
        assert set(keys(q)) == {"j1", "local"}
        await sp.start()
        await reader.wait_connected(20)
        await writer.wait_connected(20)
        writer.get_map("jobs").set("j2", {"state": "open", "n": 2})
        await writer.flush()
        await until(lambda: set(keys(q)) == {"j1", "j2", "local"}, timeout=20, what="update after restart")
        writer.get_map("jobs").set("j1", {"state": "done", "n": 1})
        await until(lambda: set(keys(q)) == {"j2", "local"}, timeout=20, what="leave after restart")
    finally:
        await writer.close()
        await reader.close()


# ---------------------------------------------------------------------------------------------
# Offline results against the oracle, under random local writes


_values = st.fixed_dictionaries({}, optional={
    "a": st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "ab", "b"]), st.booleans()),
    "b": st.one_of(st.integers(-3, 3), st.sampled_from(["", "a", "ba"])),
})
_keys = st.sampled_from([f"k{i}" for i in range(8)])


def _oracle(data: dict[str, Any], pred: dict[str, Any] | None, sort: list[tuple[str, str]], limit: int | None
            ) -> list[tuple[str, Any]]:
    rows = [(k, v) for k, v in data.items() if pred is None or oracle_match(v, pred)]
    rows.sort(key=cmp_to_key(lambda x, y: o_cmp_sort(x, y, sort)))
    return rows[:limit] if limit else rows


async def test_offline_results_match_oracle_under_local_writes() -> None:
    c = TopGunClient("ws://127.0.0.1:9/ws", storage=MemoryStorage(), connect=False)
    await c.start()
    counter = {"n": 0}
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            st.one_of(st.none(), predicates),
            st.lists(st.tuples(st.sampled_from(["a", "b", "_key"]), st.sampled_from(["asc", "desc"])),
                     max_size=2),
            st.one_of(st.none(), st.integers(1, 4)),
            st.lists(st.tuples(_keys, st.one_of(st.none(), _values)), max_size=15),
        )
        def check(pred: Any, sort: list[tuple[str, str]], limit: int | None, writes: list[Any]) -> None:
            counter["n"] += 1
            name = f"m{counter['n']}"
            m = c.get_map(name)
            data: dict[str, Any] = {}
            q = c.query(name, predicate=pred, sort=sort, limit=limit)
            log: list[QueryChange] = []
            q.subscribe(log.append)
            view: dict[str, Any] = {}
            for k, v in writes:
                if v is None:
                    m.remove(k)
                    data.pop(k, None)
                else:
                    m.set(k, v)
                    data[k] = v
                assert q.results == _oracle(data, pred, sort, limit)
            for ch in log:  # the change stream replays to the same result set
                if ch.change_type is ChangeType.LEAVE:
                    del view[ch.key]
                else:
                    view[ch.key] = ch.value
            assert view == dict(q.results)
            q.close()

        check()
        assert counter["n"] >= 20
    finally:
        await c.close()


async def test_auth_value_ref_queries_are_served_by_the_server() -> None:
    from topgun.server.app import TopGunServer

    secret = "s" * 40
    srv = TopGunServer(port=0, storage=f"memory://q-{uuid.uuid4().hex}", jwt_secret=secret)
    await srv.start()
    try:
        import jwt

        def token(sub: str) -> str:
            return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, secret, algorithm="HS256")

        alice = await connected(srv.url, token=token("alice"))
        alice.get_map("notes").set("n1", {"owner": "alice"})
        alice.get_map("notes").set("n2", {"owner": "bob"})
        await alice.flush()
        q = alice.query("notes", predicate={"op": "eq", "attribute": "owner", "valueRef": "auth.sub"})
        assert not q.local
        await q.wait_settled()
        assert keys(q) == ["n1"]
        await alice.close()
    finally:
        await srv.stop()
