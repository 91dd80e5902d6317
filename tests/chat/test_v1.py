"""Instances and the account's OpenAI-compatible endpoint, with the official openai client."""

import io
import json

import openai
import pydantic
import pytest
from conftest import managed_app
from litestar.testing import TestClient
from signin_support import api_key

from appliance.accounts import service as accounts

pytestmark = pytest.mark.inference

FACT = b"# Project Zephyr\n\nThe launch code of Project Zephyr is PURPLE-OTTER-42.\n"


@pytest.fixture
def env(linked_settings, models_dir, db, clock):
    # The web reads the model registry it shares with the inference service.
    with managed_app(linked_settings, models_dir, db, clock) as (app, _, client):
        created = client.post("/api/instances", json={"name": "assistant", "max_tokens": 48})
        assert created.status_code == 201, created.text
        other = client.post("/api/instances", json={"name": "other"}).json()
        bound = client.post(
            "/api/keys",
            json={"name": "bound", "scope": "inference", "instance_id": created.json()["id"]},
        ).json()["key"]
        free = client.post("/api/keys", json={"name": "free", "scope": "inference"}).json()["key"]
        yield {
            "app": app,
            "manage": client,
            "instance": created.json(),
            "other": other,
            "bound": bound,
            "free": free,
            "db": db,
            "clock": clock,
        }


def sdk(env, key):
    http = TestClient(env["app"])
    return openai.OpenAI(
        base_url="http://testserver.local/v1", api_key=key, http_client=http, max_retries=0
    )


def test_models_lists_instances_and_a_bound_key_sees_only_its_own(env):
    assert [m.id for m in sdk(env, env["free"]).models.list()] == ["assistant", "other"]
    assert [m.id for m in sdk(env, env["bound"]).models.list()] == ["assistant"]


def test_chat_with_the_openai_client(env):
    client = sdk(env, env["bound"])
    answer = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    assert answer.model == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert all(chunk.model == "assistant" for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage chunk unless asked for
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    with_usage = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert next(c for c in with_usage if not c.choices).usage.total_tokens > 0


def test_embeddings_with_the_openai_client(env):
    result = sdk(env, env["free"]).embeddings.create(
        model="assistant", input=["hello", "world"], encoding_format="float"
    )
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384


def test_knowledge_is_retrieved_and_cited(env):
    manage = env["manage"]
    upload = manage.post("/api/documents", files={"file": ("zephyr.md", io.BytesIO(FACT))})
    assert upload.status_code == 202
    http = TestClient(env["app"])
    http.headers["Authorization"] = f"Bearer {env['free']}"
    question = [{"role": "user", "content": "What is the launch code of Project Zephyr?"}]
    on = {"model": "assistant", "messages": question, "max_tokens": 24, "temperature": 0}
    response = http.post("/v1/chat/completions", json=on)
    assert response.status_code == 200, response.text
    passages = response.json()["appliance"]["passages"]
    assert passages[0]["filename"] == "zephyr.md"
    off = {**on, "max_tokens": 4, "appliance": {"knowledge": False}}
    assert "appliance" not in http.post("/v1/chat/completions", json=off).json()


def test_errors_are_openai_shaped(env):
    client = sdk(env, env["bound"])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="assistant", messages=[])
    manage = env["manage"]
    instance_id = env["instance"]["id"]
    assert manage.post(f"/api/instances/{instance_id}/stop").json()["state"] == "stopped"
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x"}]
        )
    assert manage.post(f"/api/instances/{instance_id}/start").json()["state"] == "running"
    refused = manage.post(f"/api/instances/{instance_id}/destroy", json={})
    assert refused.status_code == 400
    assert (
        manage.post(f"/api/instances/{instance_id}/destroy", json={"confirm": True}).status_code
        == 200
    )
    with pytest.raises(openai.AuthenticationError):  # its bound key was revoked at once
        client.models.list()
    assert manage.get(f"/api/instances/{instance_id}").status_code == 404


def test_a_session_cookie_never_authorises_v1_and_manage_keys_do_not_either(env):
    with pytest.raises(openai.AuthenticationError):
        sdk(env, env["manage"].headers["Authorization"].split()[1]).models.list()


def test_instances_api_validation_and_isolation(env):
    manage = env["manage"]
    assert manage.post("/api/instances", json={"name": "Bad Name!"}).status_code == 400
    assert manage.post("/api/instances", json={"name": "assistant"}).status_code == 409
    assert manage.post("/api/instances", json={"name": "x", "temperature": 5}).status_code == 400
    assert manage.post("/api/instances", json={"name": "y", "model": "gpt-9"}).status_code == 400
    changed = manage.patch(f"/api/instances/{env['other']['id']}", json={"top_k": 3})
    assert changed.status_code == 200 and changed.json()["top_k"] == 3
    db, clock = env["db"], env["clock"]
    stranger, account = accounts.create_user(db, "b@example.org", clock(), account_name="B")
    key = api_key(db, stranger, account, "manage", clock())
    inference_key = api_key(db, stranger, account, "inference", clock())
    other = TestClient(env["app"])
    other.headers["Authorization"] = f"Bearer {key}"
    instance_id = env["instance"]["id"]
    assert other.get(f"/api/instances/{instance_id}").status_code == 404
    assert other.patch(f"/api/instances/{instance_id}", json={"top_k": 1}).status_code == 404
    assert other.post(f"/api/instances/{instance_id}/stop").status_code == 404
    assert other.get("/api/instances").json() == []
    with pytest.raises(openai.NotFoundError):
        sdk(env, inference_key).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x"}]
        )


def test_a_key_cannot_be_bound_to_another_accounts_instance(env):
    db, clock = env["db"], env["clock"]
    stranger, account = accounts.create_user(db, "c@example.org", clock(), account_name="C")
    key = api_key(db, stranger, account, "manage", clock())
    other = TestClient(env["app"])
    other.headers["Authorization"] = f"Bearer {key}"
    response = other.post(
        "/api/keys",
        json={"name": "x", "scope": "inference", "instance_id": env["instance"]["id"]},
    )
    assert response.status_code == 404


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


def test_a_required_tool_call_is_valid_by_construction_also_streamed(env):
    client = sdk(env, env["bound"])
    answer = client.chat.completions.create(
        model="assistant",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and call.id
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    named = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(
        client.chat.completions.create(
            model="assistant",
            messages=ASK_WEATHER,
            tools=[WEATHER],
            tool_choice=named,
            max_tokens=40,
            temperature=0,
            stream=True,
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["get_weather"]
    assert json.loads("".join(d.function.arguments for d in deltas)).keys() == {"city", "days"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The call and its result go back in the next turn: content null, role "tool".
    follow_up = client.chat.completions.create(
        model="assistant",
        messages=[
            *ASK_WEATHER,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'},
        ],
        tools=[WEATHER],
        max_tokens=8,
        temperature=0,
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_structured_output_parses_into_a_pydantic_model(env):
    class City(pydantic.BaseModel):
        name: str
        population: int

    parsed = (
        sdk(env, env["bound"])
        .chat.completions.parse(
            model="assistant",
            messages=[{"role": "user", "content": "Describe Paris."}],
            response_format=City,
            max_tokens=48,
            temperature=0,
        )
        .choices[0]
        .message.parsed
    )
    assert isinstance(parsed, City) and parsed.name


def test_n_choices_are_generated_and_counted(env):
    answer = sdk(env, env["bound"]).chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Count from one to twenty."}],
        n=3,
        max_tokens=4,
        seed=7,
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in answer.choices)
    assert answer.usage.completion_tokens == 12


def test_log_probabilities_of_each_token_also_streamed(env):
    client = sdk(env, env["bound"])
    ask = {"model": "assistant", "messages": [{"role": "user", "content": "Say hello."}]}
    answer = client.chat.completions.create(
        **ask, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and bytes(token.bytes).decode() == token.token
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert token.top_logprobs[0].token == token.token  # greedy: the likeliest one
    plain = client.chat.completions.create(**ask, max_tokens=2, logprobs=False)
    assert plain.choices[0].logprobs is None
    stream = client.chat.completions.create(
        **ask,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    # Each streamed token carries its own entry (two runs' greedy texts need not be the
    # same: the second reuses the cached prompt, docs/api.md), without alternatives here.
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "".join(t.token for t in streamed) == text
    assert len(streamed) == chunks[-1].usage.completion_tokens
    assert all(t.top_logprobs == [] and t.logprob <= 0 for t in streamed)


def test_chat_fields_real_clients_send_are_accepted(env):
    answer = sdk(env, env["bound"]).chat.completions.create(
        model="assistant",
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Say hi."}]},
        ],
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"28": -100},
        seed=1,
        stop=["\n\n"],
        metadata={"team": "a"},
        store=False,
        parallel_tool_calls=True,
        max_completion_tokens=6,
        extra_body={"top_k": 20, "repetition_penalty": 1.1},  # other vendors': ignored
    )
    assert answer.choices[0].message.content


def test_refused_fields_are_named_with_the_clients_indexes(env):
    client = sdk(env, env["bound"])
    system = {"role": "system", "content": "Be brief."}
    cases = [
        ({"logprobs": True, "top_logprobs": 21}, ASK_WEATHER, "top_logprobs"),
        ({"top_logprobs": 2}, ASK_WEATHER, "logprobs"),
        ({"store": True}, ASK_WEATHER, "store"),
        ({"n": 9}, ASK_WEATHER, "n"),
        ({}, [system, *ASK_WEATHER, {"role": "wizard", "content": "x"}], "messages[2].role"),
        (
            {},
            [
                system,
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            ],
            "messages[1].content[0].type",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"not": {}}},
                }
            },
            ASK_WEATHER,
            "response_format.json_schema",
        ),
    ]
    for extra, messages, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="assistant", messages=messages, **extra)
        assert refused.value.param == param, refused.value.body
    with pytest.raises(openai.AuthenticationError) as denied:
        sdk(env, "sk-wrong").models.list()
    assert denied.value.code == "invalid_api_key"


def test_models_can_be_retrieved_by_name(env):
    assert sdk(env, env["free"]).models.retrieve("other").id == "other"
    with pytest.raises(openai.NotFoundError) as hidden:
        sdk(env, env["bound"]).models.retrieve("other")
    assert hidden.value.code == "model_not_found"


def test_base64_embeddings_equal_the_float_ones_and_dimensions_shorten(env):
    client = sdk(env, env["free"])
    floats = client.embeddings.create(model="assistant", input="hello", encoding_format="float")
    packed = client.embeddings.create(model="assistant", input="hello")  # the SDK asks base64
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    short = client.embeddings.create(model="assistant", input="hello", dimensions=64)
    vector = short.data[0].embedding
    assert len(vector) == 64 and sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="assistant", input=[[1, 2, 3]])
    assert refused.value.param == "input"


def test_legacy_completions_plain_and_streamed(env):
    client = sdk(env, env["bound"])
    answer = client.completions.create(
        model="assistant", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert answer.object == "text_completion" and answer.model == "assistant"
    assert answer.choices[0].text and 0 < answer.usage.completion_tokens <= 6
    chunks = client.completions.create(
        model="assistant",
        prompt="The capital of France is",
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer.choices[0].text
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="assistant", prompt="x", echo=True)
    assert refused.value.param == "echo"


def test_a_bound_key_reaches_no_other_instance_on_any_route(env):
    client = sdk(env, env["bound"])
    calls = [
        lambda: client.completions.create(model="other", prompt="x"),
        lambda: client.responses.create(model="other", input="x"),
        lambda: client.embeddings.create(model="other", input="x"),
        lambda: client.chat.completions.create(model="other", messages=ASK_WEATHER),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as hidden:
            call()
        assert hidden.value.code == "model_not_found"


def test_a_stateless_response_with_a_function_tool_also_streamed(env):
    client = sdk(env, env["bound"])
    tool = {"type": "function", **WEATHER["function"]}
    answer = client.responses.create(
        model="assistant",
        input=ASK_WEATHER[0]["content"],
        instructions="Use the tools.",
        tools=[tool],
        tool_choice="required",
        max_output_tokens=40,
        temperature=0,
    )
    call = next(item for item in answer.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    follow_up = client.responses.create(
        model="assistant",
        input=[
            ASK_WEATHER[0],
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        max_output_tokens=8,
        temperature=0,
    )
    assert follow_up.output_text
    events = list(
        client.responses.create(
            model="assistant", input="Say hello.", max_output_tokens=8, temperature=0, stream=True
        )
    )
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="assistant", input="x", previous_response_id="resp_1")
    assert refused.value.param == "previous_response_id"
