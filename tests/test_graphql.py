"""A GraphQL document's inline values never reach the disk.

Strawberry's OpenTelemetry extension (the GraphQL library most FastAPI services use)
writes the whole document of each operation under ``query`` (with ``component`` set to
``graphql``), and each resolver's arguments under ``graphql.param.<arg>``. A client
that writes its values inline (``customer(name: "Jean Tremblay")``) sent them to disk
both ways. Now the document's literals are masked as a statement's, read as GraphQL
reads them (``"..."`` strings, ``#`` comments), and the arguments are PII keys (rule
9). The conventions' ``graphql.document`` is masked the same way.

The real extension runs in a subprocess: it takes its tracer from the global tracer
provider, which a process sets once. All personal data here is fake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, Tracer

from otel_json_exporter import PiiPolicy
from otel_json_exporter._span_rows import SpanSnapshot, snapshot_to_row

from ._spans import export_spans, records_in

WRITERS = ["thread", "process"]

APP = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
import strawberry
from strawberry.extensions.tracing import OpenTelemetryExtensionSync
from otel_json_exporter import OperationSpanExporter

provider = TracerProvider()
exporter = OperationSpanExporter(storage_path=sys.argv[1], writer=sys.argv[2])
provider.add_span_processor(BatchSpanProcessor(exporter))
trace.set_tracer_provider(provider)


@strawberry.type
class Customer:
    city: str


@strawberry.type
class Query:
    @strawberry.field
    def customer(self, name: str, phone: str, limit: int = 1) -> Customer:
        return Customer(city="Montreal")


schema = strawberry.Schema(query=Query, extensions=[OpenTelemetryExtensionSync])
result = schema.execute_sync(
    'query Find {  # the support page\\n'
    '  customer(name: "Jean Tremblay", phone: "416-555-0199", limit: 5) { city }\\n}'
)
assert result.errors is None, result.errors
provider.shutdown()
"""


@pytest.mark.parametrize("writer", WRITERS)
def test_strawberry_operations_keep_no_inline_value(tmp_path: Path, writer: str) -> None:
    subprocess.run([sys.executable, "-c", APP, str(tmp_path), writer], check=True, timeout=120)
    records = records_in(tmp_path)
    written = json.dumps(records)
    assert "416-555-0199" not in written
    assert "Tremblay" not in written
    (operation,) = [r for r in records if r["operation_name"] == "GraphQL Query: Find"]
    assert operation["metadata"]["query"] == (
        "query Find {  # the support page\n  customer(name: ?, phone: ?, limit: ?) { city }\n}"
    )
    (resolver,) = [r for r in records if r["operation_name"] == "GraphQL Resolving: customer"]
    assert not any(key.startswith("graphql.param.") for key in resolver["metadata"])
    assert resolver["metadata"]["graphql.path"] == "customer"  # the rest is kept


def test_the_conventions_graphql_document_is_masked_too() -> None:
    document = 'mutation { signUp(email: "jean@exemple.ca", name: "Jean", age: 42) { id } }'
    attributes = {"graphql.document": document, "graphql.operation.type": "mutation"}
    ids = (7, 9, None)
    snapshot: SpanSnapshot = ("op", 1, 10**18, None, True, None, attributes, *ids, None, None, None)
    row, redacted = snapshot_to_row(snapshot, PiiPolicy())
    assert row[6]["graphql.document"] == "mutation { signUp(email: ?, name: ?, age: ?) { id } }"
    assert redacted == 3


def test_a_query_attribute_of_another_kind_is_not_read_as_graphql() -> None:
    """Only a GraphQL span's ``query`` is a document; another's is text as any."""
    attributes = {"query": 'status:"open" limit 50'}
    ids = (7, 9, None)
    snapshot: SpanSnapshot = ("op", 0, 10**18, None, True, None, attributes, *ids, None, None, None)
    assert snapshot_to_row(snapshot, PiiPolicy())[0][6]["query"] == 'status:"open" limit 50'


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        # A document written without spaces (a minified one, or one typed into curl):
        # a number right after ":" is a value there, no placeholder as ":1" is in SQL.
        ("{customer(phone:4165550199,limit:5){city}}", "{customer(phone:?,limit:?){city}}"),
        ('{customer(name:"Jean",age:-42){city}}', "{customer(name:?,age:-?){city}}"),
        ("{customer(filter:{age:42}){city}}", "{customer(filter:{age:?}){city}}"),
    ],
)
def test_a_number_right_after_a_colon_is_masked(document: str, expected: str) -> None:
    for attributes in (
        {"graphql.document": document},
        {"component": "graphql", "query": document},
    ):
        ids = (7, 9, None)
        snapshot: SpanSnapshot = (
            "op", 1, 10**18, None, True, None, attributes, *ids, None, None, None
        )  # fmt: skip
        metadata = snapshot_to_row(snapshot, PiiPolicy())[0][6]
        assert "4165550199" not in json.dumps(metadata)
        assert metadata[next(iter(attributes.keys() - {"component"}))] == expected


class _Shy(str):
    """A component's name that says it equals nothing: the process writer sees its text."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


@pytest.mark.parametrize("writer", WRITERS)
def test_a_graphql_span_is_told_by_its_components_text(tmp_path: Path, writer: str) -> None:
    def make(tracer: Tracer) -> None:
        attributes = {"component": _Shy("graphql"), "query": '{customer(name: "Jean") {city}}'}
        tracer.start_span("GraphQL Query", kind=SpanKind.SERVER, attributes=attributes).end()

    (record,), _ = export_spans(tmp_path, make, writer=writer)
    assert "Jean" not in json.dumps(record)
    assert record["metadata"]["query"] == "{customer(name: ?) {city}}"
