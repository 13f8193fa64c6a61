"""Values written into a database statement never reach the disk.

``db.statement`` (``db.query.text`` in the stable conventions) holds a statement as
the application sent it. With its values written in (``WHERE name = 'Jean
Tremblay'``), no key rule could see them: each literal is now ``?``, as
OpenTelemetry's conventions ask. The bound values that instrumentations record
when asked (``capture_parameters``: ``db.statement.parameters``, and
``db.query.parameter.<key>`` / ``db.operation.parameter.<key>``) are PII keys.

Real sqlite3 behind OpenTelemetry's DB-API instrumentation, real SDK, both
writers, batch files read back. All personal data here is fake.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.dbapi import instrument_connection
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer

from otel_json_exporter import MetricsManager, OperationSpanExporter, PiiPolicy
from otel_json_exporter import _sql as sql_module
from otel_json_exporter._span_rows import SpanSnapshot, plain_queued_row, snapshot_to_row
from otel_json_exporter._sql import dialect_of, mask_sql
from otel_json_exporter.mapping import span_to_record

from ._spans import export_spans, records_in

WRITERS = ["thread", "process"]
PERSON = ("Jean Tremblay", "416-555-0199", 4165550199, "j.tremblay@exemple.ca")


def _database_spans(provider: TracerProvider) -> None:
    """A real sqlite3 connection, instrumented: literals, then bound parameters."""
    connection = instrument_connection(
        "tests",
        sqlite3.connect(":memory:"),
        "sqlite",
        tracer_provider=provider,
        capture_parameters=True,
    )
    cursor = connection.cursor()
    cursor.execute("CREATE TABLE people (name TEXT, phone TEXT, number INTEGER, email TEXT)")
    name, phone, number, email = PERSON
    cursor.execute(f"INSERT INTO people VALUES ('{name}', '{phone}', {number}, '{email}')")
    cursor.execute("SELECT name FROM people WHERE phone = ? AND number = ?", (phone, number))
    cursor.execute(f"SELECT * FROM people WHERE name = '{name}' LIMIT 5")
    connection.close()


def _export_database_spans(directory: Path, writer: str) -> tuple[list[dict[str, Any]], int]:
    exporter = OperationSpanExporter(storage_path=directory, writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _database_spans(provider)
    provider.shutdown()
    return records_in(directory), exporter.manager.stats().pii_redacted


@pytest.mark.parametrize("writer", WRITERS)
def test_statements_from_a_real_database_keep_no_value(tmp_path: Path, writer: str) -> None:
    records, redacted = _export_database_spans(tmp_path, writer)
    written = json.dumps(records)
    for value in PERSON:
        assert str(value) not in written
    assert "Tremblay" not in written
    statements = [record["metadata"].get("db.statement") for record in records]
    assert statements == [
        "CREATE TABLE people (name TEXT, phone TEXT, number INTEGER, email TEXT)",
        "INSERT INTO people VALUES (?, ?, ?, ?)",
        "SELECT name FROM people WHERE phone = ? AND number = ?",  # bound: as it was
        "SELECT * FROM people WHERE name = ? LIMIT ?",
    ]
    assert all(record["operation_type"] == "database_query" for record in records)
    assert all("db.statement.parameters" not in record["metadata"] for record in records)
    # 4 + 2 literals, and the one parameters attribute dropped
    assert redacted == 7


def test_the_instrumentation_did_record_what_is_masked() -> None:
    """The test above would pass on an instrumentation recording nothing: it records it all."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _database_spans(provider)
    raw = [dict(span.attributes or {}) for span in memory.get_finished_spans()]
    assert "'Jean Tremblay'" in str(raw[1]["db.statement"])
    assert "416-555-0199" in str(raw[2]["db.statement.parameters"])
    masked = [span_to_record(span)[0].metadata for span in memory.get_finished_spans()]
    assert masked[1]["db.statement"] == "INSERT INTO people VALUES (?, ?, ?, ?)"
    assert "db.statement.parameters" not in masked[2]


def test_the_stable_conventions_attribute_is_masked_too(tmp_path: Path) -> None:
    def make(tracer: Tracer) -> None:
        tracer.start_span(
            "SELECT people",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.query.text": "SELECT * FROM people WHERE name = 'Jean Tremblay'",
                "db.query.parameter.0": "Jean Tremblay",
                "db.operation.parameter.phone": "416-555-0199",
            },
        ).end()

    (record,), redacted = export_spans(tmp_path, make)
    assert record["metadata"] == {
        "db.system.name": "postgresql",
        "db.query.text": "SELECT * FROM people WHERE name = ?",
        **{key: record["metadata"][key] for key in record["metadata"] if not key.startswith("db")},
    }
    assert redacted == 3


async def test_record_operation_refuses_bound_values_under_any_of_their_keys(
    tmp_path: Path,
) -> None:
    manager = MetricsManager(tmp_path)
    await manager.start()
    try:
        for key in ("db.statement.parameters", "db.query.parameter.0", "db.operation.parameter.x"):
            with pytest.raises(ValueError, match="PII") as caught:
                await manager.record_operation("q", "q", 1.0, metadata={key: "Jean Tremblay"})
            assert "Tremblay" not in str(caught.value)
        # A statement the application records itself is its own: kept as given.
        await manager.record_operation("q", "q", 1.0, metadata={"db.statement": "SELECT 1"})
    finally:
        await manager.stop()
    assert manager.stats().total_persisted == 1


@pytest.mark.parametrize(
    ("system", "statement", "expected"),
    [
        # standard SQL: '' is a quote, "..." a name
        (
            "postgresql",
            "SELECT \"name\" FROM t WHERE a = 'O''Brien' AND b = -1.5e3 OR c = 0x1F OR d = .5",
            'SELECT "name" FROM t WHERE a = ? AND b = -? OR c = ? OR d = ?',
        ),
        ("postgresql", "SELECT 'C:\\temp', 'Jean' FROM t", "SELECT ?, ? FROM t"),
        ("postgresql", "SELECT E'it\\'s Jean', 1", "SELECT E?, ?"),
        ("postgresql", "SELECT $$Jean's$$, $fn$Jean 42$fn$, a$b$c", "SELECT ?, ?, a$b$c"),
        # placeholders and names with digits stay
        (
            "sqlite",
            "SELECT t2.a FROM t2 WHERE a = ? AND b = ?1 AND c = :2 AND d = $3 AND e = @p1",
            "SELECT t2.a FROM t2 WHERE a = ? AND b = ?1 AND c = :2 AND d = $3 AND e = @p1",
        ),
        ("postgresql", "SELECT * FROM t WHERE a = %s AND b = %(b_1)s", None),
        # MySQL: backslash escapes, "..." a string, `...` a name
        ("mysql", "SELECT 'O\\'Brien', \"Jean\" FROM `it's`", "SELECT ?, ? FROM `it's`"),
        ("MariaDB", 'SELECT * FROM t WHERE a = "x\\"y"', "SELECT * FROM t WHERE a = ?"),
        # documents: a key stays, its value goes
        (
            "mongodb",
            "find {'email': 'jean@exemple.ca', 'age': {'$gt': 42}, \"o'k\": \"Jean\"}",
            "find {'email': ?, 'age': {'$gt': ?}, \"o'k\": ?}",
        ),
        (
            "elasticsearch",  # as its instrumentation sanitizes a body: kept but the leaf
            "{'query': {'match': {'name': '?'}}}",
            "{'query': {'match': {'name': ?}}}",
        ),
        (
            "opensearch",  # compact JSON: a number right after its ":"
            '{"query":{"match":{"name":"Jean Tremblay"}},"size":10}',
            '{"query":{"match":{"name":?}},"size":?}',
        ),
        # comments stay; a literal in a string is the string's
        (
            "sqlite",
            "SELECT 1 -- don't 2\nFROM t /* it's 3 */ WHERE a = '-- 4'",
            "SELECT ? -- don't 2\nFROM t /* it's 3 */ WHERE a = ?",
        ),
        # cut short by the SDK: masked to the end
        ("postgresql", "SELECT * FROM t WHERE name = 'Jean Trem", "SELECT * FROM t WHERE name = ?"),
        ("postgresql", "SELECT $$Jean Trem", "SELECT ?"),
        # no system named: a backslash leaves the rest uncertain, so it goes too
        (None, "SELECT 'O\\'Brien', 'Jean' FROM t", "SELECT ?"),
        (None, "SELECT 'O''Brien', 'Jean' FROM t", "SELECT ?, ? FROM t"),
        # ... and "..." is a string to MySQL (tests/test_review_sql.py)
        (None, 'SELECT "name" FROM t LIMIT 10', "SELECT ? FROM t LIMIT ?"),
    ],
)
def test_literals_are_read_as_the_database_reads_them(
    system: str | None, statement: str, expected: str | None
) -> None:
    masked, count = mask_sql(statement, dialect_of(system))
    if expected is None:
        assert (masked, count) == (statement, 0)
    else:
        assert masked == expected
        # each new "?" is a literal masked; so is a quoted "?" (a body sanitized before)
        assert count == expected.count("?") - statement.count("?") + statement.count("'?'")


def test_a_statement_without_literals_is_returned_as_it_is() -> None:
    statement = "SELECT a FROM t WHERE b = ?"
    for _ in range(2):  # and once it is remembered
        masked, count = mask_sql(statement, dialect_of("sqlite"))
        assert masked is statement
        assert count == 0


_SECRET = st.from_regex(r"Zq[a-z]{3}[0-9]{3}", fullmatch=True)
_NUMBER = st.integers(min_value=10**6, max_value=10**12)


@settings(max_examples=400, deadline=None)
@given(
    system=st.sampled_from([None, "postgresql", "mysql", "sqlite", "mssql", "mongodb"]),
    pieces=st.lists(
        st.one_of(
            st.sampled_from(
                ["SELECT", "*", "FROM t", "WHERE", "a =", "AND", ",", "(", ")", "?", "$1", '"c"']
            ),
            _SECRET.map(lambda secret: f"'{secret}'"),
            _SECRET.map(lambda secret: f"'{secret}''s {secret}'"),
            _SECRET.map(lambda secret: f"'{secret}\\x {secret}'"),  # MySQL: \x is x
            _SECRET.map(lambda secret: f"'{secret}\\' {secret}'"),  # rewritten below
            _SECRET.map(lambda secret: f"$${secret}$$"),
            _NUMBER.map(str),
            _NUMBER.map(lambda number: f"-{number}.5e3"),
        ),
        max_size=12,
    ),
)
def test_no_literal_value_survives(system: str | None, pieces: list[str]) -> None:
    statement = " ".join(pieces)
    if system not in ("mysql", "mongodb", None):
        # A MySQL escape read the standard way ends its string early: not a literal
        # there, but a name. Written the standard way instead.
        statement = statement.replace("\\'", "''")
    masked, _ = mask_sql(statement, dialect_of(system))
    assert "Zq" not in masked
    assert not any(char.isdigit() for char in masked.replace("$1", ""))


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT '" + "\\'" * 100_000,
        "SELECT '" + "''" * 100_000,
        "SELECT " + "1" * 200_000 + "a",
        "SELECT " + "$a" * 100_000,
        "SELECT " + '"' + '""' * 100_000,
        "SELECT " + "-- x\n" * 50_000,
        "SELECT " + "1.2." * 50_000,
        "SELECT " + "'a' " * 50_000,
    ],
)
def test_long_statements_are_read_in_linear_time(statement: str) -> None:
    done = threading.Event()

    def read() -> None:
        for system in (None, "postgresql", "mysql"):
            mask_sql(statement, dialect_of(system))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(60)  # a hang guard, not a timing


def test_a_statement_without_literals_keeps_the_plain_path() -> None:
    """A database span whose statement binds its values costs no more than any other."""
    policy = PiiPolicy()

    def snapshot(statement: str) -> SpanSnapshot:
        attributes = {"db.system.name": "postgresql", "db.query.text": statement}
        ids = (7, 9, None)  # the trace, the span, no parent
        return ("SELECT t", 2, 10**18, 10**18 + 5, True, None, attributes, *ids, "shop", None, None)

    bound, literal = snapshot("SELECT a FROM t WHERE b = $1"), snapshot("SELECT 'Jean'")
    snapshot_to_row(bound, policy)  # the policy judges the keys, as for any first span
    queued = plain_queued_row(bound, policy)
    assert queued is not None
    assert json.loads(queued[6])["db.query.text"] == "SELECT a FROM t WHERE b = $1"
    assert plain_queued_row(literal, policy) is None  # the full path masks it
    assert snapshot_to_row(literal, policy)[0][6]["db.query.text"] == "SELECT ?"


def test_a_policy_can_still_block_the_statement_whole() -> None:
    """README's advice for statements written with values: the mapping drops it whole."""
    attributes = {"db.system.name": "sqlite", "db.statement": "SELECT a FROM t WHERE b = ?"}
    ids = (7, 9, None)
    snapshot: SpanSnapshot = ("q", 2, 10**18, None, True, None, attributes, *ids, None, None, None)
    row, redacted = snapshot_to_row(snapshot, PiiPolicy(blocked_keys={"db.statement"}))
    assert "db.statement" not in row[6]
    assert row[6]["db.system.name"] == "sqlite"
    assert redacted == 1


def test_a_statement_masked_as_text_once_is_masked_by_each_policy_its_own_way() -> None:
    """The text masking of a statement is remembered per policy: a policy that blocks
    more must never be given what a laxer one made of the same statement."""
    statement = "SELECT a FROM t WHERE tenant=%s AND b = 7"
    attributes = {"db.system.name": "postgresql", "db.query.text": statement}
    ids = (7, 9, None)
    snapshot: SpanSnapshot = ("q", 2, 10**18, None, True, None, attributes, *ids, None, None, None)
    lax, strict = PiiPolicy(), PiiPolicy(blocked_keys={"tenant"})
    for _ in range(2):  # the second time from what each policy remembers
        assert snapshot_to_row(snapshot, lax)[0][6]["db.query.text"] == (
            "SELECT a FROM t WHERE tenant=%s AND b = ?"
        )
        assert snapshot_to_row(snapshot, strict)[0][6]["db.query.text"] == (
            "SELECT a FROM t WHERE tenant=REDACTED AND b = ?"
        )


DJANGO = (
    'SELECT "auth_user"."id", "auth_user"."username", "auth_user"."email" FROM "auth_user" '
    'WHERE "auth_user"."id" = %s LIMIT 21'
)


def test_a_statement_with_literals_that_comes_again_is_masked_the_same_from_memory() -> None:
    """An ORM's statement holding a constant (Django's ``LIMIT 21``) is read twice, then
    masked from memory: the same text and count every time, and for each dialect its own."""
    statement = f"{DJANGO} /* {uuid.uuid4().hex} */"  # seen by no other test
    first = mask_sql(statement, "postgresql")
    assert first[1] == 1
    assert first[0].startswith(DJANGO.replace("LIMIT 21", "LIMIT ? /* "))
    assert (statement, "postgresql") not in sql_module._masked  # seen once: not kept
    assert mask_sql(statement, "postgresql") == first
    assert sql_module._masked[statement, "postgresql"] == first  # seen twice: kept
    for _ in range(3):
        assert mask_sql(statement, "postgresql") == first
    # MySQL reads "..." as strings: its own reading, never PostgreSQL's from memory.
    assert mask_sql(statement, "mysql") != first
    assert mask_sql(statement, "mysql") == mask_sql(statement, "mysql")


def test_a_value_written_into_a_statement_seen_once_is_not_kept_in_memory() -> None:
    """What the mask remembers of a statement seen once is a hash, never its text."""
    value = "Marie-Ève Lavoie 514-555-0142"
    statement = f"INSERT INTO people (name) VALUES ('{value}')"
    assert mask_sql(statement, "postgresql") == ("INSERT INTO people (name) VALUES (?)", 1)
    assert all(value not in text for text, _ in sql_module._masked)
    assert all(type(fingerprint) is int for fingerprint in sql_module._seen_once)


def test_what_the_mask_remembers_is_bounded() -> None:
    """Arbitrary statements, each seen twice, never grow the memory past its bounds."""
    for number in range(sql_module._REMEMBERED + 10):
        statement = f"SELECT a FROM t WHERE b = {number}"
        mask_sql(statement, "sqlite")
        assert mask_sql(statement, "sqlite") == ("SELECT a FROM t WHERE b = ?", 1)
        assert len(sql_module._masked) <= sql_module._REMEMBERED
        assert len(sql_module._seen_once) <= sql_module._SEEN_ONCE
    long_statement = "SELECT 'x' " + "-" * sql_module._REMEMBERED_MASKED_LENGTH
    for _ in range(2):
        mask_sql(long_statement, "sqlite")
    assert (long_statement, "sqlite") not in sql_module._masked


def test_a_django_statement_with_a_constant_is_mapped_the_same_every_time() -> None:
    """A span whose statement holds a constant takes the full path each time; from
    memory the second time on, it writes the same row."""
    policy = PiiPolicy()
    attributes = {"db.system.name": "postgresql", "db.query.text": DJANGO}
    ids = (7, 9, None)
    snapshot: SpanSnapshot = ("q", 2, 10**18, None, True, None, attributes, *ids, None, None, None)
    rows = [snapshot_to_row(snapshot, policy) for _ in range(4)]
    assert all(row == rows[0] for row in rows)
    assert rows[0][0][6]["db.query.text"] == DJANGO.replace("LIMIT 21", "LIMIT ?")
    assert rows[0][1] == 1
    policy.check_row(rows[0][0])
    # The manager's check remembers the masked statement clean, as it does shorter texts.
    assert ("text", rows[0][0][6]["db.query.text"]) in policy._unchanged
