"""What the chat stream tells the page besides the answer: what is happening before the
first token, and, on an error, whether and when trying again can work."""

import pytest
from conftest import free_port

from appliance.chat.answer import status_text
from appliance.errors import InvalidInput, PaymentRequired, Throttled, Unavailable
from appliance.inference.client import InferenceClient
from appliance.web.errors import stream_error


def test_error_events_carry_the_status_and_when_to_retry():
    busy = stream_error(Unavailable("The model is busy: too many requests are waiting.", 2))
    assert busy == {
        "type": "server_error",
        "message": "The model is busy: too many requests are waiting.",
        "status": 503,
        "retry_after": 2,
        "code": "service_unavailable",
    }
    # The inference service down (nothing listens): 503, retry in 5 s.
    with pytest.raises(Unavailable) as down:
        InferenceClient(f"http://127.0.0.1:{free_port()}", None).count_tokens(["x"])
    assert stream_error(down.value)["retry_after"] == 5
    assert stream_error(Throttled("Too many requests.", 2))["status"] == 429
    assert stream_error(PaymentRequired("Out of credit."))["retry_after"] is None
    assert stream_error(PaymentRequired("Out of credit."))["status"] == 402
    assert stream_error(InvalidInput("No."))["status"] == 400


def test_status_says_what_happens_before_the_first_token():
    assert status_text(5, 0) == "Reading 5 passages from your documents…"
    assert status_text(1, 0) == "Reading 1 passage from your documents…"
    assert status_text(0, 0) == "Writing the answer…"
    assert status_text(5, 3) == "The model is busy: 3 other requests are waiting."
