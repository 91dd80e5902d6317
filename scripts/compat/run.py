"""Client compatibility (issue 17): the OpenAI clients people point at a local endpoint,
each with its common calls, against a running appliance. Not part of the test suite.

Usage::

    .venv/bin/python scripts/compat/run.py --url http://127.0.0.1:8000 --key KEY --model NAME
    .venv/bin/python scripts/compat/run.py --start    # a fresh appliance, temporary dir

``--key`` is an inference key, ``--model`` an instance name. ``--start`` runs
``python -m appliance up`` on a fresh data dir (as scripts/bench/load.py does), adds an
account with an instance ``compat`` (256 tokens, knowledge off) and an inference key,
and stops it at the end.

The clients are pip-installed into throw-away venvs, one per client as its users would
have it (their pins differ: litellm's holds back the ``openai`` that pydantic-ai needs),
under ``--venv`` (default /tmp/appliance-compat; ``--no-install`` reuses them); one that
does not install is noted. Each (client, feature) probe is a small program run in the
client's venv with a time limit; the
table shows ``ok``, ``FAIL`` (the last line of its error below the table) or ``-``
where the client has no such call. Features: plain chat, streaming, a tool call (forced
where the client can force one), structured output (the client's own way: ``parse``,
``with_structured_output``, ``--schema``, ``output_type``, ``response_model``,
``response_format``) and embeddings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import venv
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ("plain", "stream", "tools", "structured", "embeddings")
PACKAGES = {
    "openai": ["openai"],
    "langchain-openai": ["langchain-openai"],
    "pydantic-ai": ["pydantic-ai-slim[openai]"],
    "instructor": ["instructor"],
    "llm": ["llm"],
    "openai-agents": ["openai-agents"],
    "litellm": ["litellm"],
}

#: Shared by every probe: URL (the /v1 base), KEY, MODEL from the environment.
PRELUDE = """
import asyncio, os, pydantic
URL, KEY, MODEL = os.environ["COMPAT_URL"], os.environ["COMPAT_KEY"], os.environ["COMPAT_MODEL"]
ASK = "Say hello in three words."
WEATHER = "What is the weather in Paris? Use the tool."
class City(pydantic.BaseModel):
    name: str
    country: str
CITY = "Name a city in France and its country."
def get_weather(city: str) -> str:
    \"\"\"The weather in a city.\"\"\"
    return "sunny"
"""

PROBES: dict[str, dict[str, str]] = {
    "openai": {
        "plain": """
            from openai import OpenAI
            c = OpenAI(base_url=URL, api_key=KEY)
            a = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ASK}])
            assert a.choices[0].message.content
        """,
        "stream": """
            from openai import OpenAI
            c = OpenAI(base_url=URL, api_key=KEY)
            s = c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": ASK}], stream=True)
            assert "".join(x.choices[0].delta.content or "" for x in s if x.choices)
        """,
        "tools": """
            from openai import OpenAI
            c = OpenAI(base_url=URL, api_key=KEY)
            tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}}
            a = c.chat.completions.create(model=MODEL, tools=[tool], tool_choice="required",
                messages=[{"role": "user", "content": WEATHER}])
            call = a.choices[0].message.tool_calls[0]
            import json; assert "city" in json.loads(call.function.arguments)
        """,
        "structured": """
            from openai import OpenAI
            c = OpenAI(base_url=URL, api_key=KEY)
            a = c.chat.completions.parse(model=MODEL, response_format=City,
                messages=[{"role": "user", "content": CITY}])
            assert isinstance(a.choices[0].message.parsed, City)
        """,
        "embeddings": """
            from openai import OpenAI
            c = OpenAI(base_url=URL, api_key=KEY)
            e = c.embeddings.create(model=MODEL, input=["one", "two"])
            assert len(e.data) == 2 and len(e.data[0].embedding) > 8
        """,
    },
    "langchain-openai": {
        "plain": """
            from langchain_openai import ChatOpenAI
            assert ChatOpenAI(base_url=URL, api_key=KEY, model=MODEL).invoke(ASK).content
        """,
        "stream": """
            from langchain_openai import ChatOpenAI
            m = ChatOpenAI(base_url=URL, api_key=KEY, model=MODEL)
            assert "".join(c.content for c in m.stream(ASK))
        """,
        "tools": """
            from langchain_openai import ChatOpenAI
            m = ChatOpenAI(base_url=URL, api_key=KEY, model=MODEL)
            a = m.bind_tools([get_weather], tool_choice="required").invoke(WEATHER)
            assert a.tool_calls and "city" in a.tool_calls[0]["args"]
        """,
        "structured": """
            from langchain_openai import ChatOpenAI
            m = ChatOpenAI(base_url=URL, api_key=KEY, model=MODEL)
            assert isinstance(m.with_structured_output(City).invoke(CITY), City)
        """,
        "embeddings": """
            from langchain_openai import OpenAIEmbeddings
            e = OpenAIEmbeddings(base_url=URL, api_key=KEY, model=MODEL,
                check_embedding_ctx_length=False)  # its default sends OpenAI's token ids
            assert len(e.embed_documents(["one", "two"])) == 2
        """,
    },
    "pydantic-ai": {
        "_model": """
            from pydantic_ai import Agent
            from pydantic_ai.providers.openai import OpenAIProvider
            try:
                from pydantic_ai.models.openai import OpenAIChatModel as Model
            except ImportError:
                from pydantic_ai.models.openai import OpenAIModel as Model
            model = Model(MODEL, provider=OpenAIProvider(base_url=URL, api_key=KEY))
        """,
        "plain": """
            assert Agent(model).run_sync(ASK).output
        """,
        "stream": """
            async def main():
                async with Agent(model).run_stream(ASK) as r:
                    return "".join([t async for t in r.stream_text(delta=True)])
            assert asyncio.run(main())
        """,
        "tools": """
            called = []
            agent = Agent(model)
            @agent.tool_plain
            def weather(city: str) -> str:
                \"\"\"The weather in a city.\"\"\"
                called.append(city)
                return "sunny"
            agent.run_sync(WEATHER)
            assert called, "the model did not call the tool (auto tool choice)"
        """,
        "structured": """
            assert isinstance(Agent(model, output_type=City).run_sync(CITY).output, City)
        """,
    },
    "instructor": {
        "_model": """
            import instructor
            from openai import OpenAI
            def city(mode):
                c = instructor.from_openai(OpenAI(base_url=URL, api_key=KEY), mode=mode)
                return c.chat.completions.create(model=MODEL, response_model=City,
                    messages=[{"role": "user", "content": CITY}])
        """,
        "tools": """
            assert isinstance(city(instructor.Mode.TOOLS), City)
        """,
        "structured": """
            assert isinstance(city(instructor.Mode.JSON_SCHEMA), City)
        """,
    },
    "llm": {
        "_model": """
            import tempfile, pathlib
            home = pathlib.Path(tempfile.mkdtemp())
            (home / "extra-openai-models.yaml").write_text(
                f"- model_id: compat\\n  model_name: {MODEL}\\n  api_base: {URL}\\n"
                "  api_key_name: compat\\n  supports_tools: true\\n  supports_schema: true\\n")
            os.environ["LLM_USER_PATH"] = str(home)
            import llm
            model = llm.get_model("compat")
        """,
        "plain": """
            assert model.prompt(ASK, key=KEY, stream=False).text()
        """,
        "stream": """
            assert "".join(model.prompt(ASK, key=KEY))
        """,
        "tools": """
            called = []
            def weather(city: str) -> str:
                \"\"\"The weather in a city.\"\"\"
                called.append(city)
                return "sunny"
            model.chain(WEATHER, tools=[weather], key=KEY).text()
            assert called, "the model did not call the tool (auto tool choice)"
        """,
        "structured": """
            import json
            City.model_validate(json.loads(model.prompt(CITY, schema=City, key=KEY).text()))
        """,
    },
    "openai-agents": {
        "_model": """
            from agents import Agent, Runner, function_tool, set_tracing_disabled
            from agents import OpenAIChatCompletionsModel
            from openai import AsyncOpenAI
            set_tracing_disabled(True)
            model = OpenAIChatCompletionsModel(MODEL, AsyncOpenAI(base_url=URL, api_key=KEY))
        """,
        "plain": """
            assert Runner.run_sync(Agent(name="a", model=model), ASK).final_output
        """,
        "stream": """
            async def main():
                r = Runner.run_streamed(Agent(name="a", model=model), ASK)
                return [e async for e in r.stream_events()] and r.final_output
            assert asyncio.run(main())
        """,
        "tools": """
            called = []
            @function_tool
            def weather(city: str) -> str:
                \"\"\"The weather in a city.\"\"\"
                called.append(city)
                return "sunny"
            from agents import ModelSettings
            agent = Agent(name="a", model=model, tools=[weather],
                model_settings=ModelSettings(tool_choice="required"), reset_tool_choice=True)
            Runner.run_sync(agent, WEATHER, max_turns=3)
            assert called
        """,
        "structured": """
            out = Runner.run_sync(Agent(name="a", model=model, output_type=City), CITY)
            assert isinstance(out.final_output, City)
        """,
    },
    "litellm": {
        "_model": """
            import litellm
            kw = dict(model="openai/" + MODEL, api_base=URL, api_key=KEY)
        """,
        "plain": """
            r = litellm.completion(messages=[{"role": "user", "content": ASK}], **kw)
            assert r.choices[0].message.content
        """,
        "stream": """
            s = litellm.completion(messages=[{"role": "user", "content": ASK}], stream=True, **kw)
            assert "".join(c.choices[0].delta.content or "" for c in s)
        """,
        "tools": """
            tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}}
            r = litellm.completion(messages=[{"role": "user", "content": WEATHER}],
                tools=[tool], tool_choice="required", **kw)
            assert r.choices[0].message.tool_calls
        """,
        "structured": """
            r = litellm.completion(messages=[{"role": "user", "content": CITY}],
                response_format=City, **kw)
            City.model_validate_json(r.choices[0].message.content)
        """,
        "embeddings": """
            e = litellm.embedding(input=["one", "two"], **kw)
            assert len(e.data) == 2
        """,
    },
}


def install(root: Path, clients: list[str]) -> dict[str, str]:
    """A venv per client under ROOT with the client installed; returns the failures."""
    failed = {}
    for client in clients:
        if not (root / client / "bin" / "python").exists():
            venv.create(root / client, with_pip=True)
        pip = [str(root / client / "bin" / "python"), "-m", "pip", "install", "-q"]
        done = subprocess.run([*pip, *PACKAGES[client]], capture_output=True, text=True)
        if done.returncode:
            failed[client] = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        print(f"install {client}: {'FAILED' if done.returncode else 'ok'}", flush=True)
    return failed


def probe(python: Path, client: str, feature: str, env: dict[str, str], limit: float) -> str:
    """``ok``, or the last line of the probe's error."""
    code = (
        PRELUDE
        + textwrap.dedent(PROBES[client].get("_model", ""))
        + textwrap.dedent(PROBES[client][feature])
    )
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(code)
    try:
        done = subprocess.run(
            [str(python), file.name], env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {limit:.0f} s"
    finally:
        os.unlink(file.name)
    if done.returncode == 0:
        return "ok"
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit {done.returncode}"


def start(data_dir: Path) -> tuple[Any, str, str]:
    """A fresh ``appliance up`` (scripts/bench/common.py's ``Service``), an account, its
    instance ``compat`` and inference key."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    from common import start_up
    from load import setup_account  # scripts/bench/load.py

    from appliance.config import Settings

    appliance = start_up(data_dir)
    url = appliance.url
    manage = setup_account(Settings.load(data_dir=data_dir, environ={}), 0)["manage"]
    headers = {"Authorization": f"Bearer {manage}"}
    created = httpx.post(
        url + "/api/instances",
        json={"name": "compat", "max_tokens": 256, "knowledge": False},
        headers=headers,
    )
    created.raise_for_status()
    key = httpx.post(
        url + "/api/keys",
        json={"name": "compat", "scope": "inference", "instance_id": created.json()["id"]},
        headers=headers,
    )
    key.raise_for_status()
    return appliance, key.json()["key"], "compat"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--model")
    parser.add_argument("--start", action="store_true")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/appliance-compat"))
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--clients", default=",".join(PACKAGES))
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args(argv)
    clients = [c for c in args.clients.split(",") if c]
    appliance = None
    if args.start:
        data_dir = Path(tempfile.mkdtemp(prefix="appliance-compat-"))
        print(f"starting appliance up on {data_dir} …", flush=True)
        appliance, args.key, args.model = start(data_dir)
        args.url = appliance.url
    elif not (args.url and args.key and args.model):
        parser.error("give --url, --key and --model, or --start")
    try:
        failed = {} if args.no_install else install(args.venv, clients)
        env = {
            **os.environ,
            "COMPAT_URL": args.url.rstrip("/") + "/v1",
            "COMPAT_KEY": args.key,
            "COMPAT_MODEL": args.model,
            "OPENAI_API_KEY": args.key,  # clients that insist on one of their own
        }
        rows, notes = [], []
        for client in clients:
            cells = []
            for feature in FEATURES:
                if client in failed:
                    cells.append("not installed")
                elif feature not in PROBES[client]:
                    cells.append("-")
                else:
                    python = args.venv / client / "bin" / "python"
                    result = probe(python, client, feature, env, args.timeout)
                    cells.append("ok" if result == "ok" else "FAIL")
                    if result != "ok":
                        notes.append(f"- {client} / {feature}: {result}")
                    print(f"{client} / {feature}: {result}", flush=True)
            rows.append(f"| {client} | {' | '.join(cells)} |")
        print(f"\n| client | {' | '.join(FEATURES)} |")
        print(f"| --- |{' --- |' * len(FEATURES)}")
        print("\n".join(rows))
        print("\n".join(notes + [f"- {c}: not installed: {why}" for c, why in failed.items()]))
    finally:
        if appliance is not None:
            appliance.stop(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
