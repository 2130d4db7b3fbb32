"""Transport adapters and the HTTP side of the port, on both transports: paths, /health,
/ready, /metrics, fragment reassembly, shutdown drain order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from rawclient import RawClient, http_get, pack

from support.servers import serving
from topgun.protocol.messages import MessageType, TopicMessage
from topgun.server.app import TopGunServer
from topgun.server.interfaces import RequestContext

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("path", ["/ws", "/", "/ws?token=abc&x=1", "/?v=2"])
async def test_protocol_on_ws_and_root(transport: str, path: str) -> None:
    async with serving(transport) as server:
        c = await RawClient.open(f"ws://127.0.0.1:{server.port}{path}")
        assert (await c.ping(42))["timestamp"] == 42
        await c.close()


def parse_metrics(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def scrape(port: int) -> tuple[str, dict[str, float]]:
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return body.decode(), parse_metrics(body.decode())


async def test_health_ready_metrics_and_404(transport: str) -> None:
    async with serving(transport) as server:
        status, _, body = await http_get(server.port, "/health")
        assert status == 200 and body == b"ok\n"
        status, _, body = await http_get(server.port, "/ready")
        assert status == 200 and body == b"ready\n"
        status, _, _ = await http_get(server.port, "/nope")
        assert status == 404
        _, before = await scrape(server.port)
        c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
        for i in range(3):
            await c.ping(i)
        server.metrics.ops.inc("PUT", amount=5)
        server.metrics.rejected_ops.inc("403")
        server.metrics.storage_commit_seconds.observe(0.003)
        server.metrics.add_map_size_collector(lambda: [("todos", 12), ('we"ird', 1)])
        text, after = await scrape(server.port)

        def delta(key: str) -> float:
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert "# TYPE topgun_connections gauge" in text
        assert "# TYPE topgun_storage_commit_seconds histogram" in text
        assert after["topgun_connections"] == 1
        assert delta("topgun_connections_total") == 1
        assert delta('topgun_messages_received_total{type="PING"}') == 3
        assert delta('topgun_ops_total{type="PUT"}') == 5
        assert delta('topgun_ops_rejected_total{code="403"}') == 1
        assert delta('topgun_storage_commit_seconds_bucket{le="0.005"}') == 1
        assert delta('topgun_storage_commit_seconds_bucket{le="0.0025"}') == 0
        assert delta('topgun_storage_commit_seconds_bucket{le="+Inf"}') == 1
        assert delta("topgun_storage_commit_seconds_count") == 1
        assert after['topgun_map_size{map="todos"}'] == 12
        assert 'topgun_map_size{map="we\\"ird"} 1' in text
        await c.close()
        assert (await http_get(server.port, "/health"))[0] == 200


async def test_ready_turns_503_when_storage_is_unreachable(transport: str, tmp_path: Path) -> None:
    async with serving(
        transport, storage=f"sqlite:///{tmp_path}/ready.db", ready_probe_interval=0.05
    ) as server:
        assert (await http_get(server.port, "/ready"))[0] == 200
        await server.storage.close()  # the database goes away underneath the server
        for _ in range(100):
            if not server.ready:
                break
            await asyncio.sleep(0.02)
        status, _, body = await http_get(server.port, "/ready")
        assert status == 503 and b"unreachable" in body
        assert (await http_get(server.port, "/health"))[0] == 200  # liveness is unaffected


async def test_fragmented_binary_message_is_reassembled(transport: str) -> None:
    async with serving(transport) as server:
        c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
        frame = pack({"type": "PING", "timestamp": 77, "pad": "y" * 5000})
        parts = [frame[i : i + 1000] for i in range(0, len(frame), 1000)]
        await c.ws.send(parts)
        assert (await c.recv())["timestamp"] == 77
        await c.close()


async def test_stop_drains_runs_shutdown_hook_then_closes_1001(transport: str) -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def slow(ctx: RequestContext, msg: Any) -> None:
        order.append("handler-start")
        await release.wait()
        order.append("handler-done")
        ctx.send(TopicMessage(topic="done", data=1, timestamp=0))

    server = TopGunServer(port=0, transport=transport, storage="memory://")
    server.processors.register(MessageType.TOPIC_SUB, slow)
    server.on_shutdown(lambda s: order.append(f"shutdown-hook sessions={len(s.sessions)}"))
    await server.start()
    c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
    await c.send({"type": "TOPIC_SUB", "payload": {"topic": "x"}})
    while "handler-start" not in order:
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # in-flight work holds the shutdown
    # new connections are refused once draining started
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await asyncio.wait_for(RawClient.open(f"ws://127.0.0.1:{server.port}/ws"), 1)
    release.set()
    done = await c.recv_type("TOPIC_MESSAGE")
    assert done["payload"]["topic"] == "done"
    code, reason = await c.wait_closed()
    assert code == 1001 and reason == "server shutting down"
    await asyncio.wait_for(stopping, 10)
    assert order == ["handler-start", "handler-done", "shutdown-hook sessions=1"]
    await server.stop()  # idempotent


async def test_start_failure_releases_storage(transport: str) -> None:
    async with serving(transport) as first:
        second = TopGunServer(port=first.port, transport=transport, storage="memory://")
        with pytest.raises(OSError):
            await second.start()
        assert not await second.storage.ping()


async def test_context_manager_and_properties(transport: str) -> None:
    async with TopGunServer(port=0, transport=transport, storage="memory://", jwt_secret="k" * 40) as s:
        assert s.port > 0 and s.transport_name == transport
        assert s.start_line == f"topgun listening on ws://127.0.0.1:{s.port}/ws storage=memory auth=hs256"
    assert not s.ready


async def test_commit_latency_histogram_reads_the_group_committer(transport: str) -> None:
    from topgun.core.records import LWWRecord, Timestamp
    from topgun.server.persistence import GroupCommitter

    async with serving(transport) as server:
        _, before = await scrape(server.port)
        committer = GroupCommitter(server.storage)
        server.metrics.storage_commit_seconds.add_source(committer.stats.latency)
        server.metrics.storage_commit_seconds.observe(20.0)  # own observations still count
        for i in range(3):
            committer.batch.lww_put("m", f"k{i}", LWWRecord(i, Timestamp(1, i, "n")))
            await committer.commit_future()
        await committer.close()
        n = committer.stats.latency.count
        assert n >= 3  # at least one per transaction
        _, after = await scrape(server.port)

        def delta(key: str) -> float:
            return after[key] - before[key]

        assert delta("topgun_storage_commit_seconds_count") == n + 1
        assert delta('topgun_storage_commit_seconds_bucket{le="10"}') == n
        assert delta('topgun_storage_commit_seconds_bucket{le="+Inf"}') == n + 1
        assert delta("topgun_storage_commit_seconds_sum") >= 20.0
