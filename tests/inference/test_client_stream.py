"""``InferenceClient``'s async calls (the web's): the streamed answer it relays token by
token and whole answers, against a small loopback server that writes exactly the bytes
each test gives it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from appliance.errors import Throttled, Unavailable
from appliance.inference.client import ACCOUNT_HEADER, InferenceClient, kept_connections

OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
HI = {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


def event(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


async def serve(replies: list[bytes], pause: float = 0.0):
    """A server answering each connection with ``replies`` (a pause after each write), then
    closing it; returns the server and the requests it received."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(line.lower().partition(b":")[::2] for line in head.split(b"\r\n"))
        length = int(fields.get(b"content-length", 0))
        received.append(head + await reader.readexactly(length))
        for reply in replies:
            writer.write(reply)
            await writer.drain()
            if pause:
                # A pause that ends when the client hangs up: Python 3.12's server waits
                # for its connections to close when it shuts down.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(), pause)
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0), received


def chunks_from(replies: list[bytes], *, pause: float = 0.0, timeout: float = 5.0, **kwargs):
    """What ``astream_chat`` yields from a server writing ``replies``, and what it was sent;
    an exception it raises is returned beside the chunks that came before it."""

    async def run():
        server, received = await serve(replies, pause)
        port = server.sockets[0].getsockname()[1]
        client = InferenceClient(f"http://127.0.0.1:{port}", "key-1", timeout=timeout)
        got: list[dict] = []
        async with server:
            try:
                async for chunk in client.astream_chat({"messages": []}, **kwargs):
                    got.append(chunk)
            except Exception as exc:  # returned for the test to check
                return got, received, exc
        return got, received, None

    return asyncio.run(run())


def test_the_request_carries_the_body_key_and_account():
    got, (request,), error = chunks_from(
        [OK_CHUNKED + chunked(event(HI), b"data: [DONE]\n\n") + b"0\r\n\r\n"], account_id="acc-7"
    )
    assert error is None and got == [HI]
    head, _, body = request.partition(b"\r\n\r\n")
    first, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert first == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer key-1"
    assert headers[ACCOUNT_HEADER.lower()] == "acc-7"
    sent = json.loads(body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_events_come_whole_however_the_chunks_and_reads_cut_them():
    café = {"choices": [{"index": 0, "delta": {"content": "café"}}]}
    body = (
        chunked(event(café)[:20], event(café)[20:] + event(HI).replace(b"\n", b"\r\n"))
        + b"0\r\n\r\n"
    )
    cut = body.index("é".encode()) + 1  # inside the UTF-8 character
    got, _, error = chunks_from([OK_CHUNKED + body[:9], body[9:cut], body[cut:]], pause=0.01)
    assert error is None and got == [café, HI]


def test_a_long_event_and_bytes_that_are_not_utf8_come_through():
    long = {"choices": [{"index": 0, "delta": {"content": "x" * 300_000}}]}
    broken = b'data: {"choices": [{"index": 0, "delta": {"content": "\xff"}}]}\n\n'
    got, _, error = chunks_from([OK_CHUNKED + chunked(event(long), broken) + b"0\r\n\r\n"])
    assert error is None
    assert got == [long, {"choices": [{"index": 0, "delta": {"content": "\ufffd"}}]}]


def test_an_error_status_raises_what_it_means():
    error = json.dumps({"error": {"message": "Too many requests."}}).encode()
    reply = b"HTTP/1.1 429 Too Many\r\nretry-after: 9\r\ncontent-length: %d\r\n\r\n%s"
    got, _, raised = chunks_from([reply % (len(error), error)])
    assert got == [] and isinstance(raised, Throttled)
    assert "Too many requests" in str(raised) and raised.retry_after == 9


def test_a_stream_cut_in_the_middle_says_the_model_stopped():
    got, _, error = chunks_from([OK_CHUNKED + chunked(event(HI))])
    assert got == [HI]
    assert isinstance(error, Unavailable) and "stopped in the middle of this answer" in str(error)


def test_a_server_that_stops_writing_times_out():
    got, _, error = chunks_from([OK_CHUNKED + chunked(event(HI))], pause=5, timeout=0.3)
    assert got == [HI]
    assert isinstance(error, Unavailable) and "took too long" in str(error)


def test_what_is_not_http_is_unavailable():
    got, _, error = chunks_from([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])
    assert got == [] and isinstance(error, Unavailable)


def test_a_netrc_entry_for_the_host_changes_nothing(monkeypatch, tmp_path):
    """aiohttp's ``trust_env`` would take it, and refuse to send it beside the key."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    got, (request,), error = chunks_from([OK_CHUNKED + chunked(event(HI)) + b"0\r\n\r\n"])
    assert error is None and got == [HI]
    assert b"Bearer key-1" in request and b"Basic" not in request


def test_the_proxy_from_the_environment_is_used(monkeypatch):
    """As httpx did for this request (and still does for the others): HTTP_PROXY routes it."""
    reply = OK_CHUNKED + chunked(event(HI)) + b"0\r\n\r\n"

    async def run():
        proxy, received = await serve([reply])
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        client = InferenceClient("http://inference.invalid:8001", "key-1", timeout=5)
        async with proxy:
            return [c async for c in client.astream_chat({"messages": []})], received

    got, (request,) = asyncio.run(run())
    assert got == [HI]
    assert request.startswith(b"POST http://inference.invalid:8001/v1/chat/completions HTTP/1.1")


def answer_of(reply: bytes, call, pause: float = 0.0):
    """What ``call(client)`` returns (or raises) against a server answering ``reply``, and
    the request it sent."""

    async def run():
        server, received = await serve([reply], pause)
        port = server.sockets[0].getsockname()[1]
        client = InferenceClient(f"http://127.0.0.1:{port}", "key-1", timeout=5)
        async with server:
            try:
                return await call(client), received[0]
            except Exception as exc:  # returned for the test to check
                return exc, received[0]

    return asyncio.run(run())


def test_a_whole_answer_and_what_its_error_statuses_mean():
    body = json.dumps({"choices": [{"message": {"content": "Hi"}}]}).encode()
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    got, request = answer_of(ok, lambda c: c.achat({"messages": []}, account_id="acc-7"))
    assert got == {"choices": [{"message": {"content": "Hi"}}]}
    head, _, sent = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1")
    assert b"acc-7" in head and json.loads(sent)["stream"] is False

    busy = b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n"
    got, _ = answer_of(busy, lambda c: c.achat({"messages": []}))
    assert isinstance(got, Unavailable) and got.retry_after == 7


def test_health_that_stalls_is_unavailable_within_its_timeout():
    stalled = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{"
    started = time.monotonic()
    got, request = answer_of(stalled, lambda c: c.ahealth(timeout=0.3), pause=5)
    assert request.startswith(b"GET /healthz HTTP/1.1")
    assert isinstance(got, Unavailable) and "took too long" in str(got)
    assert time.monotonic() - started < 3


def test_no_proxy_sends_the_request_straight_to_its_host(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.delenv("no_proxy", raising=False)
    got, (request,), error = chunks_from([OK_CHUNKED + chunked(event(HI)) + b"0\r\n\r\n"])
    assert error is None and got == [HI]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1")


async def keep_alive_server(port: int = 0, *, stream_forever: bool = False):
    """A server that answers any number of requests on a connection (a whole JSON answer;
    with ``stream_forever``, one event of a stream that never ends); returns it and, per
    connection, the requests it read and whether the client closed it."""
    connections: list[dict] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = {"requests": 0, "closed": asyncio.Event(), "writer": writer}
        connections.append(seen)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.lower().partition(b":")[::2] for line in head.split(b"\r\n"))
                await reader.readexactly(int(fields.get(b"content-length", 0)))
                seen["requests"] += 1
                if stream_forever:
                    writer.write(OK_CHUNKED + chunked(event(HI)))
                    await reader.read()  # returns once the client has closed the connection
                    break
                body = json.dumps({"ok": True}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except asyncio.IncompleteReadError:
            pass  # the client closed the connection between requests
        seen["closed"].set()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", port), connections


def test_kept_connections_carry_the_next_request_and_close_at_the_end():
    async def run():
        server, connections = await keep_alive_server()
        client = InferenceClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "k")
        async with server:
            async with kept_connections():
                assert await client.achat({"messages": []}) == {"ok": True}
                assert await client.achat({"messages": []}) == {"ok": True}
                assert [c["requests"] for c in connections] == [2]  # one connection, two asks
            await asyncio.wait_for(connections[0]["closed"].wait(), 2)
            assert await client.achat({"messages": []}) == {"ok": True}  # a session of its own
            assert len(connections) == 2

    asyncio.run(run())


def test_a_stream_left_before_its_end_closes_its_kept_connection():
    """The service stops generating an answer when its connection closes: leaving a stream
    must close it, not park it for the next request."""

    async def run():
        server, connections = await keep_alive_server(stream_forever=True)
        client = InferenceClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "k")
        async with server, kept_connections():
            stream = client.astream_chat({"messages": []})
            assert await anext(stream) == HI
            await stream.aclose()
            await asyncio.wait_for(connections[0]["closed"].wait(), 2)

    asyncio.run(run())


def test_the_web_keeps_its_connections_while_it_runs(app):
    from litestar.testing import TestClient

    from appliance.inference import client as module

    def kept() -> bool:
        return asyncio.get_running_loop() in module._kept

    with TestClient(app) as web:
        assert web.blocking_portal.call(kept)
    assert module._kept == {}  # closed with the app


def test_a_restarted_service_is_reached_on_a_new_connection():
    """The service restarts (a crash, an upgrade): the connections kept to the old process
    are dead, and the next request must not be sent on one."""

    async def run():
        server, connections = await keep_alive_server()
        port = server.sockets[0].getsockname()[1]
        client = InferenceClient(f"http://127.0.0.1:{port}", "k")
        async with kept_connections():
            assert await client.achat({"messages": []}) == {"ok": True}
            server.close()
            for connection in connections:  # the old process goes, and its sockets with it
                connection["writer"].close()
            await server.wait_closed()
            again, reconnections = await keep_alive_server(port)
            async with again:
                assert await client.achat({"messages": []}) == {"ok": True}
                assert [c["requests"] for c in reconnections] == [1]

    asyncio.run(run())
