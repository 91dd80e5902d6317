"""The one client the web and worker processes use to reach the inference service.

Its base URL is a setting, so it may equally point at any OpenAI-compatible server the
operator runs (llama.cpp's server, vLLM). The account id and priority travel in headers
that only this client sets; the web process strips them from incoming requests. The
synchronous calls go through httpx, the asynchronous ones (the web's) through aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from appliance import vault
from appliance.config import Settings
from appliance.errors import ApplianceError, ConfigError, Throttled, Unavailable
from appliance.inference.openai_schema import InvalidParam

ACCOUNT_HEADER = "X-Appliance-Account"
PRIORITY_HEADER = "X-Appliance-Priority"
INTERNAL_HEADERS = (ACCOUNT_HEADER.lower(), PRIORITY_HEADER.lower())
#: A server that said it has no reranker is not asked again for this long.
NO_RERANKER_RECHECK_SECONDS = 60.0
_no_reranker: dict[str, float] = {}  # base URL -> monotonic time to ask again
#: How long ``kept_connections`` keeps an idle connection: under the keep-alive of the
#: servers it talks to (uvicorn's, ours, closes one after 5 s), so that no request is sent
#: on a connection the server is closing at that moment.
KEEPALIVE_SECONDS = 2.0
_kept: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_sync_client: tuple[int, httpx.Client] | None = None  # (the process it was made in, it)


@contextlib.asynccontextmanager
async def kept_connections() -> AsyncIterator[None]:
    """While this runs (the web's lifespan), the async calls made on this event loop share
    one aiohttp session, so their connections to the service stay open between requests (a
    request on a new session each time cost 1.4 ms, on a kept one 0.55 ms). Outside it each
    call has a session of its own. A streamed answer left before its end closes its
    connection (the service then stops generating it), as before."""
    loop = asyncio.get_running_loop()
    session = _kept[loop] = _session(aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECONDS))
    try:
        yield
    finally:
        del _kept[loop]
        await session.close()


def _session(connector: aiohttp.BaseConnector | None = None) -> aiohttp.ClientSession:
    """An aiohttp session for the service: no cookies kept, no timeout of its own (each
    request sets its own). ``read_bufsize``: aiohttp refuses a line over twice this, and
    one event may be long (a tool call's arguments, logprobs)."""
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=1 << 20,
    )


def _http() -> httpx.Client:
    """This process's client for the synchronous calls, shared by its threads: its
    connections stay open between calls (a ``/tokenize`` on a new client per call took
    2.3 ms, on a kept connection 1.1 ms). It keeps no cookies, so no request carries what
    the server answered another. Made again in a forked child."""
    global _sync_client
    pid = os.getpid()
    if _sync_client is None or _sync_client[0] != pid:
        jar = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        _sync_client = (pid, httpx.Client(verify=_tls(), cookies=jar))
    return _sync_client[1]


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building the default one loads the system's CA
    bundle (16.6 ms measured, scripts/bench/chat.py), which every new httpx client did."""
    return ssl.create_default_context()


class InferenceError(ApplianceError):
    """The inference service answered with an error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class InferenceClient:
    """Sync and async access to ``/v1/chat/completions``, ``/v1/embeddings`` and health."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = httpx.Timeout(timeout, connect=5.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceClient:
        try:
            key: str | None = vault.read_secret(settings, "inference_key")
        except ConfigError:
            # Pointing at an external server that needs no key is allowed; our own
            # service will answer 401 and the error says so.
            key = None
        return cls(settings.inference_url, key, timeout=settings.inference.request_timeout_seconds)

    # -- sync ------------------------------------------------------------------------
    def health(self, timeout: float = 3.0) -> dict[str, Any]:
        """``GET /healthz``; raises Unavailable when the service does not answer.

        An external OpenAI-compatible server (vLLM, llama.cpp's server) has no /healthz:
        then ``GET /v1/models`` answering is what healthy means.
        """
        with self._http_errors():
            response = _http().get(f"{self.base_url}/healthz", timeout=timeout)
            if response.status_code == 404:
                headers = self._headers(None)
                response = _http().get(self._url("/v1/models"), headers=headers, timeout=timeout)
                return _external_health(self._json(response))
        return self._json(response)

    def metrics(self, timeout: float = 3.0) -> dict[str, float]:
        """``GET /metrics`` (Prometheus text) as ``{"name{labels}": value}``.

        Raises:
            Unavailable: the service does not answer, or has no such endpoint.
        """
        with self._http_errors():
            response = _http().get(f"{self.base_url}/metrics", timeout=timeout)
        if response.status_code != 200:
            raise Unavailable(f"{self.base_url}/metrics answered {response.status_code}.", 5)
        values = {}
        for line in response.text.splitlines():
            name, _, value = line.rpartition(" ")
            if not line.startswith("#") and name:
                try:
                    values[name] = float(value)
                except ValueError:
                    continue
        return values

    def chat(self, body: dict[str, Any], *, account_id: str | None = None) -> dict[str, Any]:
        """A non-streaming chat completion (OpenAI request and response shapes)."""
        payload = {**body, "stream": False}
        return self._json(self._post("/v1/chat/completions", payload, self._headers(account_id)))

    def count_tokens(self, texts: list[str], *, model: str = "embedding") -> list[int] | None:
        """Token counts in the embedding (or ``model="chat"``) model's tokenizer; None if
        the server can't tell (an external OpenAI-compatible server without ``/tokenize``)."""
        response = self._post("/tokenize", {"input": texts, "model": model}, self._headers(None))
        if response.status_code in (401, 403, 429, 503):
            self._json(response)  # raises: a wrong key or a busy service is not "can't tell"
        # Anything but our own answer (llama.cpp's and vLLM's /tokenize take other bodies,
        # other servers have none): the caller estimates instead.
        try:
            counts = response.json().get("counts") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            counts = None
        return counts if isinstance(counts, list) and len(counts) == len(texts) else None

    def embed(
        self, texts: list[str], *, account_id: str | None = None, priority: str | None = None
    ) -> list[list[float]]:
        """Embeddings of ``texts``, in order, normalised by the service."""
        return self.embed_counted(texts, account_id=account_id, priority=priority)[0]

    def embed_counted(
        self, texts: list[str], *, account_id: str | None = None, priority: str | None = None
    ) -> tuple[list[list[float]], int | None]:
        """Embeddings of ``texts`` and the input tokens the service counted (None when it
        does not say: an external server without ``usage``)."""
        headers = self._headers(account_id)
        if priority:
            headers[PRIORITY_HEADER] = priority
        body = self._json(self._post("/v1/embeddings", {"input": texts}, headers))
        vectors = [item["embedding"] for item in sorted(body["data"], key=lambda i: i["index"])]
        tokens = (body.get("usage") or {}).get("prompt_tokens")
        return vectors, tokens if isinstance(tokens, int) else None

    def rerank(
        self, query: str, documents: list[str], *, account_id: str | None = None
    ) -> list[float]:
        """Relevance of each document to ``query`` (``POST /v1/rerank``), in input order.

        Raises:
            Unavailable: the service is down or busy.
            InferenceError: it serves no reranker (501; not asked again for a minute).
        """
        if time.monotonic() < _no_reranker.get(self.base_url, 0.0):
            raise InferenceError("The inference service serves no reranker.", 501)
        body = {"query": query, "documents": documents, "top_n": len(documents)}
        response = self._post("/v1/rerank", body, self._headers(account_id))
        if response.status_code in (404, 501):  # ours without a reranker, or another server
            _no_reranker[self.base_url] = time.monotonic() + NO_RERANKER_RECHECK_SECONDS
        scores = [0.0] * len(documents)
        for result in self._json(response)["results"]:
            scores[result["index"]] = float(result["relevance_score"])
        return scores

    # -- async -----------------------------------------------------------------------
    async def astream_chat(
        self,
        body: dict[str, Any],
        *,
        account_id: str | None = None,
        path: str = "/v1/chat/completions",
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the chunks of a streaming chat completion, the usage chunk included
        (``path``: ``/v1/completions`` for a legacy completion)."""
        payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
        answering = False
        try:
            url, headers = self._url(path), self._headers(account_id)
            async with self._arequest(url, self.timeout.read, headers, payload) as response:
                answering = True
                if response.status >= 400:
                    retry_after = response.headers.get("retry-after")
                    _answer(response.status, await response.read(), retry_after)
                async for line in response.content:
                    chunk = _sse_data(line.decode(errors="replace"))
                    if chunk is not None:
                        yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(exc, cut=answering) from None

    async def achat(
        self,
        body: dict[str, Any],
        *,
        account_id: str | None = None,
        path: str = "/v1/chat/completions",
    ) -> dict:
        payload = {**body, "stream": False}
        headers = self._headers(account_id)
        return await self._afetch(self._url(path), self.timeout.read, headers, payload)

    async def ahealth(self, timeout: float = 3.0) -> dict[str, Any]:
        try:
            return await self._afetch(f"{self.base_url}/healthz", timeout, connect=timeout)
        except InferenceError as exc:
            if exc.status != 404:
                raise
        models = self._url("/v1/models")
        headers = self._headers(None)
        return _external_health(await self._afetch(models, timeout, headers, connect=timeout))

    # -- helpers ---------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _arequest(
        self,
        url: str,
        read: float | None,
        headers: dict[str, str] | None = None,
        payload: dict[str, Any] | None = None,
        *,
        connect: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One async request, ``POST payload`` (``GET`` without one); the response once its
        headers are in. aiohttp, not httpx, on this side: its C parser reads a streamed
        token for a third of httpx's CPU (scripts/bench/relay_client.py).
        Not ``trust_env``: that would also take a password from ``~/.netrc`` for the host
        (and refuse the request beside our key) in a thread hop per request; the proxy comes
        from ``_env_proxy``. The session is ``kept_connections``' where it runs."""
        connect = connect or self.timeout.connect
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        method = "GET" if payload is None else "POST"
        async with contextlib.AsyncExitStack() as stack:
            http = _kept.get(asyncio.get_running_loop())
            if http is None:
                http = await stack.enter_async_context(_session())
            request = http.request(
                method,
                url,
                json=payload,
                headers=headers,
                timeout=timeout,
                ssl=_tls(),
                proxy=_env_proxy(url),
            )
            yield await stack.enter_async_context(request)

    async def _afetch(
        self,
        url: str,
        read: float | None,
        headers: dict[str, str] | None = None,
        payload: dict[str, Any] | None = None,
        *,
        connect: float | None = None,
    ) -> dict[str, Any]:
        """``_arequest``'s JSON answer; an error status raises what it means, and no answer
        is Unavailable."""
        try:
            async with self._arequest(url, read, headers, payload, connect=connect) as response:
                content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        return _answer(response.status, content, response.headers.get("retry-after"))

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """``POST`` a JSON body to the service; Unavailable when it does not answer."""
        with self._http_errors():
            return _http().post(self._url(path), json=body, headers=headers, timeout=self.timeout)

    @contextlib.contextmanager
    def _http_errors(self) -> Iterator[None]:
        """The service not answering (any httpx error) as ``Unavailable``."""
        try:
            yield
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _headers(self, account_id: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if account_id:
            headers[ACCOUNT_HEADER] = account_id
        return headers

    def _unavailable(self, exc: Exception, *, cut: bool = False) -> Unavailable:
        """What the person waiting is told (operators find the service's URL in doctor and
        on /admin); ``cut``: the service went away in the middle of its answer."""
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return Unavailable("The model took too long to answer. Please try again.", 5)
        if cut:
            what = "stopped in the middle of this answer (it is being restarted)"
        else:
            what = "is not answering right now (it may be restarting)"
        return Unavailable(f"The model {what}. Please try again in a few seconds.", 5)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        return _answer(response.status_code, response.content, response.headers.get("retry-after"))


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY`` or
    ``ALL_PROXY``, unless ``NO_PROXY`` covers its host), as httpx takes it for the
    synchronous calls. Only these variables are read: urllib's ``getproxies`` scans the
    whole environment, 0.26 ms a request on the event loop."""
    target = urlsplit(url)
    proxy = _env(f"{target.scheme}_proxy") or _env("all_proxy")
    exempt = {"no": _env("no_proxy") or ""}
    if not proxy or urllib.request.proxy_bypass_environment(target.hostname or "", exempt):
        return None
    return proxy


def _env(name: str) -> str | None:
    """An environment variable by its lower-case name or, failing that, upper-case."""
    return os.environ.get(name) or os.environ.get(name.upper())


def _answer(status: int, content: bytes, retry_after: str | None) -> dict[str, Any]:
    """A JSON answer's body, or the exception its error status means."""
    try:
        data = json.loads(content)
    except ValueError:
        data = {}
    if status < 400:
        return data
    error = data.get("error") if isinstance(data, dict) else None
    raise _error(status, error, retry_after)


def _error(status: int, error: Any, retry_after: Any) -> ApplianceError:
    """The service's error answer as the exception the caller maps to a status.

    A refusal stays a refusal (429 or 503 with Retry-After) all the way to the caller's
    own client: it means "busy, try again", not a fault.
    """
    error = error if isinstance(error, dict) else {}
    message = error.get("message") or f"inference service answered {status}"
    retry = str(retry_after or "")
    if status == 429:
        return Throttled(message, int(retry) if retry.isdigit() else 2)
    if status == 503:
        return Unavailable(message, int(retry) if retry.isdigit() else 5)
    if status == 400:
        return InvalidParam(message, error.get("param"), error.get("code"))
    return InferenceError(message, status)


async def started(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """``chunks`` once the first one arrived: a refusal (429, 503) or an error raises here,
    while the caller can still answer with its status, rather than inside a stream that
    already answered 200. Our service sends its first chunk once the request is admitted.
    """
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None

    async def relay() -> AsyncIterator[dict[str, Any]]:
        if first is None:
            return
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    return relay()


def _external_health(models: dict[str, Any]) -> dict[str, Any]:
    """What /healthz would say, from an external server's ``/v1/models`` answer."""
    served = [m.get("id") for m in models.get("data", []) if isinstance(m, dict)]
    return {"status": "ok", "server": "external", "chat_model": ", ".join(map(str, served))}


def _sse_data(line: str) -> dict[str, Any] | None:
    """A chunk of the stream; an error event (the request failed after it began) raises."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    chunk = json.loads(data)
    error = chunk.get("error") if isinstance(chunk, dict) else None
    if isinstance(error, dict):
        raise _error(error.get("status") or 500, error, error.get("retry_after"))
    return chunk
