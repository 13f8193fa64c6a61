"""SQL text with its literals masked, as ``db.statement`` and ``db.query.text`` are written.

A statement that writes its values in (``WHERE name = 'Jean Tremblay'``,
``VALUES (4165550199)``) would carry them into every record, and no key rule can
see them. OpenTelemetry's database conventions ask that such text be sanitized
before it is kept: each literal replaced by ``?``. The Python instrumentations
do not do it, so the span mapping does (:func:`mask_sql`), as the OpenTelemetry
Java agent does by default. What a statement is made of stays: keywords,
identifiers, placeholders (``?``, ``$1``, ``%s``, ``%(name)s``, ``:name``,
``@p1``) and comments.

A literal is a quoted string (``'...'``, PostgreSQL's ``E'...'`` and
``$tag$...$tag$``, Oracle's ``q'[...]'``, MySQL's ``"..."``), or a number (``42``,
``1.5e3``, ``0x1F``, ``416_555_0199``, SQL Server's money ``$12.50``; a sign before
it stays). Which quotes are strings, and whether a backslash escapes a quote inside
one, depends on the database: each :class:`_Reading` is how one reads a statement,
chosen by the span's ``db.system.name`` (or ``db.system``, read as its text) among
those known (:data:`_SYSTEMS`):

* MySQL and MariaDB: ``'...'`` and ``"..."`` are strings, ``\\'`` escapes a quote;
  ``#`` starts a comment, ``--`` only before white space; ``/*! ... */`` is code,
  masked whole; a name may start with digits (``1st_half``).
* PostgreSQL, SQLite, SQL Server, Oracle: the SQL standard, ``'...'`` with ``''``
  for a quote; ``"..."`` is an identifier, kept. But SQLite reads ``"Jean
  Tremblay"`` as a string where no column has that name, and SQL Server with
  ``QUOTED_IDENTIFIER OFF`` always: there it is masked, unless it stands where only
  a name can (``"people"."name"``, ``FROM "people"``). Their ``[names]`` are kept.
  PostgreSQL's (and SQL Server's) comments nest, its ``--`` comments end at a
  carriage return too; Oracle's ``q'[...]'`` holds any quote.
* MongoDB, Elasticsearch, OpenSearch and CouchDB, whose statements are documents
  (JSON, or the Python ``repr`` of a filter that the PyMongo instrumentation writes
  with ``capture_statement``): ``'...'`` and ``"..."`` are strings with backslash
  escapes, but one followed by ``:`` is a key, kept (``find {'email': ?, 'age':
  {'$gt': ?}}``; a body the Elasticsearch instrumentation sanitized keeps its keys).
* Any other system (ClickHouse and Snowflake take ``\\'`` in a string), a name
  the SDK's length limit cut, or none named: the statement is read every way
  above, and what any reading takes for a literal is masked (overlapping
  literals as one). A MySQL ``'O\\'Brien'`` ends elsewhere than a standard one;
  ``"Jean Tremblay"`` is a string to MySQL.

A statement read out of step is masked from its first string to its end. That is
what a string never closed says (a statement the SDK's length limit cut short, or
one whose value held a quote: ``'Marie L'Heureux'`` is ``'Marie L'``, then
``Heureux`` as SQL, then a quote that opens the rest), and a string closed against
a word (``'L'Heureux'``, ``'Jean d'Arc'``), which no statement writes; and a name
(``"...``) or a comment never closed. Each scan is linear: every pattern below
matches in one pass, never backtracking over what it read, and a statement is
read at most once per reading.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

from otel_json_exporter.records import text_of

__all__ = ["GRAPHQL", "SQL_ATTRIBUTES", "dialect_of", "known_clean", "mask_sql"]

SQL_ATTRIBUTES = frozenset({"db.statement", "db.query.text"})
"""Attributes holding a database statement, whose literals :func:`mask_sql` masks."""

MASK = "?"

_UNKNOWN = "unknown"
GRAPHQL = "graphql"
"""The dialect of a GraphQL document (``graphql.document``; Strawberry's ``query``)."""

# A number starts where no word or placeholder sign is glued before it (t2, $1, ?1, :1,
# @p1 stay; SQL Server's $12.50 is money). It may hold "_" (416_555_0199, PostgreSQL
# 16), or be 0x1F, 0b101, 0o17; and a word glued after it is no part of it (PostgreSQL
# before 15 and SQL Server read 4165550199abc as a number and a name) but in MySQL,
# whose names may start with digits (1st_half).
_NUMBER = (
    r"(?:0[xX][0-9A-Fa-f_]+|0[oObB][0-9_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)"
)
_MYSQL_NUMBER = (
    r"(?:0[xX][0-9A-Fa-f]+|0[bB][01]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?![\w$])"
)
_STANDARD_STRING = re.compile(r"'(?:[^']|'')*'")
_BACKSLASH_STRING = re.compile(r"'(?:[^'\\]|\\.|'')*'", re.DOTALL)
_BACKSLASH_DOUBLE = re.compile(r'"(?:[^"\\]|\\.|"")*"', re.DOTALL)
_IDENTIFIER = re.compile(r'"(?:[^"]|"")*"')
_BACKTICKS = re.compile(r"`(?:[^`]|``)*`")
_Q_CLOSERS = {"[": "]", "{": "}", "(": ")", "<": ">"}
_BRACKETS = re.compile(r"\[[^\]]*\]")
_DOUBLED_BRACKETS = re.compile(r"\[(?:[^\]]|\]\])*\]")
# Where only a name can stand before a double-quoted text (FROM "people"), read in the
# 40 characters before it.
_NAME_BEFORE = re.compile(
    r"(?<![\w$])(?:from|join|into|update|set|table|references|index|view|trigger|as|exists)\s+\Z",
    re.IGNORECASE,
)
# PostgreSQL's tag: a letter, "_" or any character beyond ASCII, then digits too.
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_LINE_END = re.compile(r"[\n\r]")
_COMMENT_MARK = re.compile(r"/\*|\*/")
_CODE_AFTER_DASHES = re.compile(r"[^\x00- \x7f]")  # MySQL: "--" then no white space
_CODE_COMMENT = re.compile(r"/\*M?!")
_WORD = re.compile(r"\w")
_KEY_FOLLOWS = re.compile(r"\s*:(?!:)")  # a document's key: "name": or 'name':
_REMEMBERED = 1024  # statements found to hold no literal, per dialect: most repeat
_REMEMBERED_LENGTH = 10_000  # ... up to this long: longer ones would fill memory
_clean: dict[tuple[str, str], None] = {}
# Statements holding literals, masked, once seen twice: an ORM's constants repeat
# (Django's "LIMIT 21"), values written in do not. Only a hash of a statement seen once
# is kept, so that a value written into a statement is not held in memory for it.
_REMEMBERED_MASKED_LENGTH = 4096
_masked: dict[tuple[str, str], tuple[str, int]] = {}
_seen_once: set[int] = set()
_SEEN_ONCE = 4096


@dataclass(frozen=True)
class _Reading:
    """How one database reads a statement: what starts a string, a name, a comment."""

    backslash: bool = False  # '...' and "..." take backslash escapes (MySQL, MariaDB)
    # "...": a "name" (the standard), a "string" (MySQL), or "either" (SQLite, where no
    # column has that name; SQL Server with QUOTED_IDENTIFIER OFF): masked, but where
    # only a name can stand (_named).
    doubles: str = "name"
    brackets: str = ""  # [name]: "plain" (SQLite), "doubled" (SQL Server, "]]" in one)
    e_strings: bool = False  # E'...' takes backslash escapes (PostgreSQL)
    q_quotes: bool = False  # q'[...]', q'!...!': Oracle's, any quote inside (N too: nq'')
    nested: bool = False  # /* /* */ */ is one comment (PostgreSQL, SQL Server)
    carriage_returns: bool = False  # a "--" comment ends at "\r" too (PostgreSQL)
    money: bool = False  # $12.50 is a number (SQL Server)
    digit_names: bool = False  # a name may start with digits: 1st_half (MySQL)
    # MySQL's comments: "#" to the line's end; "--" only before white space (5--1 is a
    # subtraction); /*! ... */ and MariaDB's /*M! ... */ hold code, masked whole.
    mysql_comments: bool = False
    # A document (MongoDB's filter as Python writes it, a JSON body): a string followed
    # by ":" is a key, kept.
    document: bool = False
    # ?1, :1, @p1, $1 are placeholders, their digits kept. Not in a document or in
    # GraphQL, where a value may follow ":" with no space (phone:4165550199).
    placeholders: bool = True
    start: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # What may start a literal, or text to step over whole. A dollar quote ($$,
        # $body$: PostgreSQL's, masked in any reading) starts where no name goes on
        # (a$b$c is a PostgreSQL name).
        more = ("|#" if self.mysql_comments else "") + (r"|\[" if self.brackets else "")
        glued = r"\w" if not self.placeholders else r"\w?:@" if self.money else r"\w$?:@"
        number = _MYSQL_NUMBER if self.digit_names else _NUMBER
        start = re.compile(rf"""['"`]|--|/\*|(?<![\w$])\${more}|(?<![{glued}]){number}""")
        object.__setattr__(self, "start", start)


_POSTGRESQL = _Reading(e_strings=True, nested=True, carriage_returns=True)
_MYSQL = _Reading(backslash=True, doubles="string", mysql_comments=True, digit_names=True)
_SQLITE = _Reading(doubles="either", brackets="plain")
_SQL_SERVER = _Reading(doubles="either", brackets="doubled", nested=True, money=True)
_ORACLE = _Reading(q_quotes=True)
_DOCUMENT = _Reading(backslash=True, doubles="string", document=True, placeholders=False)
# A GraphQL document: "..." (and """...""") strings with backslash escapes, # comments.
_GRAPHQL = _Reading(backslash=True, doubles="string", mysql_comments=True, placeholders=False)
_READINGS: dict[str, tuple[_Reading, ...]] = {
    "postgresql": (_POSTGRESQL,),
    "mysql": (_MYSQL,),
    "sqlite": (_SQLITE,),
    "mssql": (_SQL_SERVER,),
    "oracle": (_ORACLE,),
    "document": (_DOCUMENT,),
    GRAPHQL: (_GRAPHQL,),
    _UNKNOWN: (_POSTGRESQL, _MYSQL, _SQLITE, _SQL_SERVER, _ORACLE),
}
_SYSTEMS = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "mssql": "mssql",
    "microsoft.sql_server": "mssql",
    "oracle": "oracle",
    "oracle.db": "oracle",
    "mongodb": "document",
    "elasticsearch": "document",
    "opensearch": "document",
    "couchdb": "document",
}
"""``db.system.name`` (and older ``db.system``) values read by their own rules; any other
is read every way."""


def dialect_of(system: object) -> str:
    """How a statement is read, from the span's ``db.system.name`` (or ``db.system``)."""
    if not isinstance(system, str):
        return _UNKNOWN
    return _SYSTEMS.get(text_of(system).lower(), _UNKNOWN)


def known_clean(text: str, dialect: str) -> bool:
    """Whether :func:`mask_sql` has found ``text`` to hold no literal (and remembers it).

    The span mapping's plain path asks this first: a statement seen for the first
    time, or one holding literals, takes the full path, which masks it once.
    """
    return (text, dialect) in _clean


def mask_sql(text: str, dialect: str = _UNKNOWN) -> tuple[str, int]:
    """``text`` with each literal replaced by ``?``, and how many were replaced.

    ``dialect`` is :func:`dialect_of` the span's database system. Returns
    ``text`` itself when it holds no literal. A statement without literals is
    remembered at once, one with literals once seen twice (:func:`_remember_masked`).
    """
    key = (text, dialect)
    if key in _clean:
        return text, 0
    known = _masked.get(key)
    if known is not None:
        return known
    readings = _READINGS.get(dialect, _READINGS[_UNKNOWN])
    if len(readings) == 1:
        spans = _literals(text, readings[0])
    else:  # what any reading takes for a literal; those that overlap as one
        spans = []
        for start, end in heapq.merge(*(_literals(text, reading) for reading in readings)):
            if spans and start < spans[-1][1]:
                if end > spans[-1][1]:
                    spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
    if not spans:
        if len(text) <= _REMEMBERED_LENGTH:
            if len(_clean) >= _REMEMBERED:
                _clean.clear()
            _clean[key] = None
        return text, 0
    parts: list[str] = []
    kept = 0  # text[kept:span start] is copied as it is
    for start, end in spans:
        parts.append(text[kept:start])
        parts.append(MASK)
        kept = end
    parts.append(text[kept:])
    masked = ("".join(parts), len(spans))
    if len(text) <= _REMEMBERED_MASKED_LENGTH:
        _remember_masked(key, masked)
    return masked


def _remember_masked(key: tuple[str, str], masked: tuple[str, int]) -> None:
    """Remember a statement holding literals the second time it is masked.

    Reading a long statement costs tens of microseconds (Django's ``auth_user``
    query, which quotes every name: 23 µs; 0.15 µs remembered), and an ORM sends the
    same few again and again. A statement seen once leaves only its hash, which
    ``hash()`` keys afresh in every process (unless ``PYTHONHASHSEED`` fixes it).
    Both memories are bounded: when full, they start again empty.
    """
    fingerprint = hash(key)
    if fingerprint in _seen_once:
        if len(_masked) >= _REMEMBERED:
            _masked.clear()
        _masked[key] = masked
    else:
        if len(_seen_once) >= _SEEN_ONCE:
            _seen_once.clear()
        _seen_once.add(fingerprint)


def _literals(text: str, reading: _Reading) -> list[tuple[int, int]]:
    """Where each literal of ``text``, as ``reading`` reads it, starts and ends, in order."""
    spans: list[tuple[int, int]] = []
    first = -1  # where the first string starts: all after it is in doubt once out of step
    position = 0
    length = len(text)
    search = reading.start.search
    while position < length:
        found = search(text, position)
        if found is None:
            break
        start, token = found.start(), found[0]
        end = found.end()
        string = token in "'\"$"  # a string of some kind, or maybe one
        if token == "'":
            end = _string_end(text, start, reading)
        elif token == '"':
            end = _end_of(_BACKSLASH_DOUBLE if reading.backslash else _IDENTIFIER, text, start)
            if reading.doubles == "name" or (
                reading.doubles == "either" and end >= 0 and _named(text, start, end)
            ):
                string = False  # an identifier: kept
        elif token == "`":  # a MySQL identifier: kept
            end = _end_of(_BACKTICKS, text, start)
        elif token == "[":  # a SQL Server or SQLite identifier: kept
            pattern = _DOUBLED_BRACKETS if reading.brackets == "doubled" else _BRACKETS
            end = _end_of(pattern, text, start)
        elif token in {"--", "#"}:
            if reading.mysql_comments and token == "--" and _CODE_AFTER_DASHES.match(text, end):
                position = start + 1  # a minus sign, and what follows it
                continue
            if reading.carriage_returns:
                line_end = _LINE_END.search(text, end)
                close = -1 if line_end is None else line_end.start()
            else:
                close = text.find("\n", end)
            end = length if close < 0 else close
        elif token == "/*":
            if reading.nested:
                end = _nested_comment_end(text, start)
            else:
                close = text.find("*/", start + 2)
                end = -1 if close < 0 else close + 2
            if reading.mysql_comments and _CODE_COMMENT.match(text, start):
                string = True  # code that MySQL runs: masked whole, as a string is
        elif token == "$":
            tag = _DOLLAR_TAG.match(text, start)
            if tag is None:  # a placeholder ($1) or a name's $: nothing to mask
                string = False
            else:
                close = text.find(tag[0], tag.end())
                end = -1 if close < 0 else close + len(tag[0])
        if reading.document and string and end >= 0 and _KEY_FOLLOWS.match(text, end):
            string = False  # a document's key: kept
        if end < 0 or (string and token in "'\"" and _WORD.match(text, end)):
            # Never closed, or closed against a word: out of step from here, or from
            # an earlier string whose value held a quote. All of it is masked.
            return _to_the_end(spans, start if first < 0 else min(first, start), length)
        if string:
            if first < 0:
                first = start
            spans.append((start, end))
        elif token[0].isdigit() or token[0] == ".":  # a number
            spans.append((start, end))
        position = end
    return spans


def _to_the_end(spans: list[tuple[int, int]], start: int, length: int) -> list[tuple[int, int]]:
    """``spans`` with the text from ``start`` to its end as their last, all in it gone."""
    while spans and spans[-1][0] >= start:
        spans.pop()
    spans.append((start, length))
    return spans


def _nested_comment_end(text: str, start: int) -> int:
    """Where the comment opening at ``start`` ends, each ``/*`` in it closed by a ``*/``
    of its own; -1 if it never does."""
    depth = 0
    for mark in _COMMENT_MARK.finditer(text, start):
        depth += 1 if mark[0] == "/*" else -1
        if not depth:
            return mark.end()
    return -1


def _named(text: str, start: int, end: int) -> bool:
    """Whether the double-quoted text at ``text[start:end]`` stands where only a name can:
    before or after a dot ("people"."name"), before a parenthesis (a function, a
    table's columns), or after a word that a name follows (FROM, JOIN, INTO, SET...)."""
    return (
        text[end : end + 1] in (".", "(")
        or text[start - 1 : start] == "."
        or _NAME_BEFORE.search(text, max(start - 40, 0), start) is not None
    )


def _string_end(text: str, start: int, reading: _Reading) -> int:
    """Where the single-quoted string opening at ``start`` ends; -1 if it never does."""
    if (
        reading.q_quotes
        and _alone(text, start - 1, "qQ")
        and start + 1 < len(text)
        and text[start + 1] not in " \t\r\n"
    ):
        # Oracle's q'<delimiter>...<delimiter>': it ends at its closing delimiter and a
        # quote, and holds any quote before them ([, {, ( and < close with ], }, ), >).
        closer = _Q_CLOSERS.get(text[start + 1], text[start + 1]) + "'"
        close = text.find(closer, start + 2)
        return -1 if close < 0 else close + 2
    if reading.backslash or (
        # PostgreSQL's E'...' takes backslash escapes: the E stands alone before the quote.
        reading.e_strings
        and start
        and text[start - 1] in "eE"
        and (start == 1 or not (text[start - 2].isalnum() or text[start - 2] in "_$"))
    ):
        return _end_of(_BACKSLASH_STRING, text, start)
    return _end_of(_STANDARD_STRING, text, start)


def _end_of(pattern: re.Pattern[str], text: str, start: int) -> int:
    """The end of ``pattern`` matched at ``start``; -1 if it never closes."""
    match = pattern.match(text, start)
    return -1 if match is None else match.end()


def _alone(text: str, at: int, letters: str) -> bool:
    """Whether ``text[at]`` is one of ``letters`` and no name goes on before it: the
    prefix of a string (Oracle's ``q`` or ``nq``), not a name's last letter."""
    if at < 0 or text[at] not in letters:
        return False
    if at and letters == "qQ" and text[at - 1] in "nN":
        at -= 1  # nq'...': a national character string, quoted so
    return not at or not (text[at - 1].isalnum() or text[at - 1] in "_$#")
