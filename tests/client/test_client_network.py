"""Connection behaviour against real sockets: handshake modes, token refresh, stalls, reconnect."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
import pytest

from topgun.client import ConnectionSettings, ConnectionState, MemoryStorage, SQLiteStorage, TopGunClient
from topgun.client.transport import backoff_delay
from topgun.errors import AuthError

SECRET = "client-test-secret-of-at-least-32-bytes"


def token(sub: str = "alice", exp_in: int = 3600) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + exp_in}, SECRET, algorithm="HS256")


async def jwt_server():
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=f"memory://client-{uuid.uuid4().hex}", jwt_secret=SECRET)
    await srv.start()
    return srv


def test_backoff_is_exponential_capped_and_jittered() -> None:
    s = ConnectionSettings()
    assert backoff_delay(0, s, lambda: 0.0) == 0.5
    assert backoff_delay(0, s, lambda: 0.999) == pytest.approx(1.499)
    assert backoff_delay(3, s, lambda: 0.5) == 8.0
    assert backoff_delay(5, s, lambda: 0.5) == 30.0  # 32 s capped at 30 s
    assert backoff_delay(50, s, lambda: 0.0) == 15.0


async def test_no_auth_server_handshake_and_states() -> None:
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=f"memory://client-{uuid.uuid4().hex}")
    await srv.start()
    try:
        states: list[ConnectionState] = []
        async with TopGunClient(srv.url, storage=MemoryStorage()) as c:
            c.on_state_change(states.append)
            await c.wait_connected(10)
            assert c.state is ConnectionState.CONNECTED
            assert c.engine.device_id  # DEVICE_ACK bound a device identity
            assert c.store.device_token
        assert states[:3] == [ConnectionState.AUTHENTICATING, ConnectionState.SYNCING,
                              ConnectionState.CONNECTED]
        assert states[-1] is ConnectionState.CLOSED
    finally:
        await srv.stop()


async def test_jwt_token_callable_is_asked_again_after_auth_fail() -> None:
    srv = await jwt_server()
    try:
        calls: list[int] = []

        async def provider() -> str:
            calls.append(1)
            return "not-a-jwt" if len(calls) == 1 else token()

        settings = ConnectionSettings(backoff_base=0.05, backoff_max=0.2)
        async with TopGunClient(srv.url, token=provider, settings=settings) as c:
            await c.wait_connected(10)
            assert len(calls) >= 2
            assert c.engine.user_id == "alice"
    finally:
        await srv.stop()


async def test_static_bad_token_stops_until_set_token() -> None:
    srv = await jwt_server()
    try:
        settings = ConnectionSettings(backoff_base=0.05, backoff_max=0.2)
        async with TopGunClient(srv.url, token=token(exp_in=-3600), settings=settings) as c:
            for _ in range(200):
                if c.state is ConnectionState.ERROR:
                    break
                await asyncio.sleep(0.02)
            assert c.state is ConnectionState.ERROR
            assert isinstance(c.last_error, AuthError)
            c.get_map("m").set("still", "works")
            c.set_token(token("bob"))
            await c.wait_connected(10)
            assert c.engine.user_id == "bob"
    finally:
        await srv.stop()


async def test_jwt_server_without_token_waits_for_set_token() -> None:
    srv = await jwt_server()
    try:
        async with TopGunClient(srv.url) as c:
            for _ in range(200):
                if c.state is ConnectionState.ERROR:
                    break
                await asyncio.sleep(0.02)
            assert c.state is ConnectionState.ERROR and not c.connected
            c.set_token(lambda: token("carol"))
            await c.wait_connected(10)
            assert c.engine.user_id == "carol"
    finally:
        await srv.stop()


@pytest.mark.timeout(60)
async def test_local_reads_and_writes_never_wait_for_a_stalled_server(stalled_server, tmp_path) -> None:
    url = await stalled_server.start()
    settings = ConnectionSettings(open_timeout=1.0, backoff_base=0.1, backoff_max=0.3)
    t0 = time.perf_counter()
    c = TopGunClient(url, storage=SQLiteStorage(tmp_path / "s.db"), settings=settings)
    await c.start()
    assert time.perf_counter() - t0 < 1.0  # start() does not wait for the connection
    for _ in range(100):
        if stalled_server.accepted:
            break
        await asyncio.sleep(0.01)
    assert stalled_server.accepted >= 1 and c.state is ConnectionState.CONNECTING
    m = c.get_map("todos")
    tags = c.get_or_map("tags")
    t1 = time.perf_counter()
    for i in range(2000):
        m.set(f"k{i}", {"i": i})
        assert m.get(f"k{i}") == {"i": i}
    tags.add("t", 1)
    m.remove("k0")
    elapsed = time.perf_counter() - t1
    # 2000 durable writes + reads while the socket hangs in its opening handshake.
    assert elapsed < 2.0, elapsed
    assert c.pending_ops == 2002 and c.state is ConnectionState.CONNECTING
    # The stalled handshake times out and the client keeps retrying; writes still work meanwhile.
    for _ in range(300):
        if stalled_server.accepted >= 2:
            break
        await asyncio.sleep(0.02)
    assert stalled_server.accepted >= 2
    m.set("during-backoff", 1)
    assert m.get("during-backoff") == 1
    t2 = time.perf_counter()
    await c.close()
    assert time.perf_counter() - t2 < 3.0


async def test_unreachable_server_keeps_retrying_with_backoff(tmp_path) -> None:
    settings = ConnectionSettings(backoff_base=0.05, backoff_max=0.1)
    states: list[ConnectionState] = []
    async with TopGunClient("ws://127.0.0.1:9/ws", settings=settings) as c:
        c.on_state_change(states.append)
        c.get_map("m").set("a", 1)
        await asyncio.sleep(0.6)
        assert states.count(ConnectionState.CONNECTING) >= 2
        assert ConnectionState.BACKOFF in states
        assert c.get_map("m").get("a") == 1


async def test_heartbeat_drops_a_silent_connection_and_reconnects() -> None:
    """A WebSocket peer that completes the upgrade and then never answers: no PONG -> reconnect."""
    from websockets.asyncio.server import serve

    opened: list[int] = []

    async def silent(ws) -> None:
        opened.append(1)
        async for _ in ws:  # read and ignore everything (DEVICE_HELLO, PING, …)
            pass

    async with serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings = ConnectionSettings(ping_interval=0.1, pong_timeout=0.35, backoff_base=0.05,
                                      backoff_max=0.1)
        async with TopGunClient(f"ws://127.0.0.1:{port}/ws", settings=settings) as c:
            await c.wait_connected(5)  # the no-auth grace elapsed: authenticated without a principal
            assert c.state is ConnectionState.CONNECTED
            await asyncio.sleep(1.5)
            assert len(opened) >= 2  # dropped for missing PONGs, then reconnected


async def test_heartbeat_pongs_keep_a_live_connection() -> None:
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=f"memory://client-{uuid.uuid4().hex}")
    await srv.start()
    try:
        settings = ConnectionSettings(ping_interval=0.1, pong_timeout=0.5)
        async with TopGunClient(srv.url, settings=settings) as c:
            await c.wait_connected(5)
            sessions = c.engine.sessions
            await asyncio.sleep(1.2)
            assert c.engine.sessions == sessions and c.connected
            assert c.engine.seconds_since_pong() < 0.5
    finally:
        await srv.stop()


@pytest.mark.timeout(60)
async def test_writes_stay_local_when_an_open_connection_stalls(tmp_path) -> None:
    """The server accepts the WebSocket, then never reads nor answers: set()/get() do not notice."""
    from websockets.asyncio.server import serve

    async def stalled(ws) -> None:
        await ws.wait_closed()  # never calls recv(): its queue fills and it stops reading

    async with serve(stalled, "127.0.0.1", 0, max_queue=1) as server:
        port = server.sockets[0].getsockname()[1]
        settings = ConnectionSettings(ping_interval=30, pong_timeout=60)
        async with TopGunClient(f"ws://127.0.0.1:{port}/ws", storage=SQLiteStorage(tmp_path / "st.db"),
                                settings=settings, batch_size=100, max_inflight_ops=1000) as c:
            await c.wait_connected(5)
            m = c.get_map("m")
            big = "x" * 2000
            t0 = time.perf_counter()
            for i in range(5000):
                m.set(f"k{i}", {"v": i, "pad": big})
                assert m.get(f"k{i}")["v"] == i
                if i % 500 == 0:
                    await asyncio.sleep(0)  # let the writer task push frames into the stalled socket
            elapsed = time.perf_counter() - t0
            assert elapsed < 5.0, elapsed
            assert c.pending_ops == 5000 and c.connected
            # Only the bounded window went to the wire; the rest waits in the op log.
            assert c.engine.session.inflight_ops <= 1000
