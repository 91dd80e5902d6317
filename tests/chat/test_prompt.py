"""Prompt assembly: the budget is respected to the token, in the documented order."""

from types import SimpleNamespace

import pytest

from appliance.chat.compose import byte_bounds, compose
from appliance.chat.prompt import MESSAGE_OVERHEAD, PASSAGES_HEADER, Passage, assemble
from appliance.errors import InvalidInput


def words(texts):
    return [len(text.split()) for text in texts]


def turns(n, size=10):
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join([f"t{i}"] * size)}
        for i in range(n)
    ]


def passages(n, size=20):
    return [Passage(i + 1, f"doc{i}", f"f{i}.md", " ".join(["p"] * size)) for i in range(n)]


def cost(assembled):
    return sum(words([m["content"]])[0] + MESSAGE_OVERHEAD for m in assembled.messages)


def test_everything_fits():
    result = assemble("be brief", passages(2), turns(5), budget=10_000, count=words)
    assert result.dropped_messages == 0 and result.dropped_passages == 0
    assert result.messages[0]["role"] == "system"
    assert PASSAGES_HEADER in result.messages[0]["content"]
    assert "[2] (f1.md)" in result.messages[0]["content"]
    assert [m["content"] for m in result.messages[1:]] == [t["content"] for t in turns(5)]


def test_oldest_history_goes_first_and_the_budget_holds_to_the_token():
    conversation = turns(20)
    for budget in range(40, 400, 7):
        result = assemble("sys", [], conversation, budget=budget, count=words)
        assert result.tokens <= budget
        assert result.messages[-1] == conversation[-1]
        kept = result.messages[1:]
        assert kept == conversation[-len(kept) :]  # a suffix: newest kept, oldest dropped
        if result.dropped_messages:
            # one more message would not have fitted
            assert result.tokens + 10 + MESSAGE_OVERHEAD > budget


def test_passages_before_history_and_best_first():
    header = len(PASSAGES_HEADER.split()) + 2
    # system + newest message + header + two passages of 30 words (+2 each), and 5 to spare
    budget = (1 + MESSAGE_OVERHEAD) + (10 + MESSAGE_OVERHEAD) + header + 2 * 32 + 5
    result = assemble("sys", passages(3, size=30), turns(6), budget=budget, count=words)
    assert [p.number for p in result.passages] == [1, 2]
    assert result.dropped_passages == 1
    assert result.dropped_messages == 5  # no room left for older turns
    assert result.tokens <= budget


def test_follow_up_keeps_the_previous_answer():
    conversation = [
        {"role": "user", "content": "What is the code name?"},
        {"role": "assistant", "content": "The code name is Bluebird."},
        {"role": "user", "content": "Spell it backwards."},
    ]
    result = assemble("sys", [], conversation, budget=200, count=words)
    assert "Bluebird" in " ".join(m["content"] for m in result.messages)


def test_a_message_that_cannot_fit_is_refused_not_cut():
    with pytest.raises(InvalidInput, match="too long"):
        assemble("sys", [], turns(1, size=500), budget=100, count=words)
    with pytest.raises(InvalidInput):
        assemble("sys", [], [], budget=100, count=words)


class Counting:
    """An inference client whose tokenizer counts words, and which keeps each call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def count_tokens(self, texts, *, model):
        self.calls.append(texts)
        return words(texts)


def composed(client, conversation, *, context_budget, max_tokens=10):
    instance = SimpleNamespace(
        system_prompt="sys",
        knowledge=False,
        max_tokens=max_tokens,
        context_budget=context_budget,
        temperature=0.2,
        top_p=0.9,
    )
    return compose(None, None, client, "acc", instance, conversation, None)


def test_a_prompt_that_fits_on_byte_bounds_is_not_counted_until_asked():
    client = Counting()
    conversation = turns(3)
    result = composed(client, conversation, context_budget=1_000)
    assert client.calls == []  # no round trip to the inference service
    assert result.dropped_messages == 0
    assert [m["content"] for m in result.payload["messages"][1:]] == [
        t["content"] for t in conversation
    ]
    texts = ["sys", *(t["content"] for t in conversation)]
    assert result.prompt_tokens == sum(byte_bounds(texts)) + 4 * MESSAGE_OVERHEAD
    # The count, when metering needs it, is what counting first would have given.
    exact = (1 + MESSAGE_OVERHEAD) + 3 * (10 + MESSAGE_OVERHEAD)
    assert result.prompt_tokens > exact
    assert result.recount() == exact
    assert len(client.calls) == 1


def test_a_prompt_that_may_not_fit_is_counted_and_trimmed_as_before():
    client = Counting()
    conversation = turns(8)
    # 8 turns of 10 words: 8 * 14 + 5 tokens counted, far more bytes.
    budget = 10 + (1 + MESSAGE_OVERHEAD) + 5 * (10 + MESSAGE_OVERHEAD)
    result = composed(client, conversation, context_budget=budget)
    assert len(client.calls) == 1 and result.recount is None
    assert result.dropped_messages == 3
    assert result.prompt_tokens == (1 + MESSAGE_OVERHEAD) + 5 * (10 + MESSAGE_OVERHEAD)


@pytest.mark.inference
def test_byte_bounds_cover_the_chat_models_count(linked_settings):
    """The bound holds for the real tokenizer, on prose, code, other scripts and emoji."""
    from appliance.inference.client import InferenceClient

    texts = [
        "",
        " ",
        "Hello, world.",
        "def f(x):\n    return {x: [1, 2, 3]}\n",
        "Съешь же ещё этих мягких французских булок",
        "日本語のテキスト、句読点。",
        "🙂🙃 emoji 👩‍👩‍👧",
        "\x00\x01 control\tand\r\nnewlines",
        "a" * 500,
    ]
    counts = InferenceClient.from_settings(linked_settings).count_tokens(texts, model="chat")
    assert counts is not None
    assert all(n <= bound for n, bound in zip(counts, byte_bounds(texts), strict=True))
