"""What people said to, or heard from, a generative-AI model never reaches the disk.

The GenAI semantic conventions keep a conversation's content out of spans unless an
application opts in (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``); then the
messages go into ``gen_ai.input.messages``, ``gen_ai.output.messages`` and
``gen_ai.system_instructions`` as JSON, and a tool call's ``gen_ai.tool.call.arguments``
and ``gen_ai.tool.call.result``. Older instrumentations, and OpenLLMetry, write
``gen_ai.prompt`` / ``gen_ai.completion`` and ``gen_ai.prompt.0.content``. A person's
own words: PII keys (rule 9), whatever they hold. The rest of a GenAI span (model,
token counts, finish reasons) is kept. Real SDK, both writers. Fake data throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from otel_json_exporter import MetricsManager, PiiPolicy

from ._spans import export_spans

WRITERS = ["thread", "process"]

CONTENT = {
    "gen_ai.input.messages": json.dumps(
        [
            {
                "role": "user",
                "parts": [{"type": "text", "content": "I am Jean Tremblay, 416-555-0199"}],
            }
        ]
    ),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": "Hello Jean Tremblay"}]}]
    ),
    "gen_ai.system_instructions": "The customer is Jean Tremblay.",
    "gen_ai.tool.call.arguments": '{"name": "Jean Tremblay"}',
    "gen_ai.tool.call.result": '{"phone": "416-555-0199"}',
    "gen_ai.prompt": "Jean Tremblay asks",
    "gen_ai.completion": "Jean Tremblay is told",
    "gen_ai.prompt.0.content": "Jean Tremblay asks",
    "gen_ai.completion.0.content": "Jean Tremblay is told",
}
KEPT: dict[str, AttributeValue] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 7,
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.tool.name": "lookup_customer",
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_conversation_is_dropped_and_its_measures_kept(tmp_path: Path, writer: str) -> None:
    def make(tracer: Tracer) -> None:
        tracer.start_span(
            "chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={**CONTENT, **KEPT}
        ).end()

    (record,), redacted = export_spans(tmp_path, make, writer=writer)
    written = json.dumps(record)
    assert "Tremblay" not in written
    assert "416-555-0199" not in written
    assert CONTENT.keys().isdisjoint(record["metadata"])
    kept = {key: record["metadata"][key] for key in KEPT}
    assert kept == {**KEPT, "gen_ai.response.finish_reasons": ["stop"]}
    assert redacted == len(CONTENT)


def test_each_key_of_a_conversation_is_pii_and_its_neighbours_are_not() -> None:
    policy = PiiPolicy()
    assert [key for key in CONTENT if not policy.is_pii_key(key)] == []
    assert [key for key in KEPT if policy.is_pii_key(key)] == []
    # Numbered forms, and the conventions' token counts under their older names, too.
    assert policy.is_pii_key("gen_ai.input.messages.0")
    assert policy.is_pii_key("gen_ai.completion.3.role")
    for key in ("gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"):
        assert not policy.is_pii_key(key)
    assert not policy.is_pii_key("gen_ai.tool.definitions")  # the tools' schemas


def test_a_policy_may_keep_a_conversation_on_purpose() -> None:
    assert not PiiPolicy(allowed_keys={"gen_ai.tool.call.arguments"}).is_pii_key(
        "gen_ai.tool.call.arguments"
    )


async def test_record_operation_refuses_a_conversation(tmp_path: Path) -> None:
    manager = MetricsManager(tmp_path)
    await manager.start()
    try:
        with pytest.raises(ValueError, match=r"gen_ai\.input\.messages") as caught:
            await manager.record_operation(
                "llm_call",
                "chat",
                812.0,
                metadata={"gen_ai.input.messages": CONTENT["gen_ai.input.messages"]},
            )
        assert "Tremblay" not in str(caught.value)
    finally:
        await manager.stop()
    assert manager.stats().total_persisted == 0
