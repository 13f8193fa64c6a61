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
``$tag$...$tag$``, MySQL's ``"..."``), or a number (``42``, ``-1.5e3``,
``0x1F``). Which quotes are strings, and whether a backslash escapes a quote
inside one, depends on the database (``db.system.name``, or ``db.system``):

* MySQL and MariaDB: ``'...'`` and ``"..."`` are strings, ``\\'`` escapes a quote.
* Any other named system (PostgreSQL, SQLite, SQL Server, Oracle...): the SQL
  standard, ``'...'`` with ``''`` for a quote; ``"..."`` is an identifier, kept.
* None named: the standard, but a string holding a backslash is ambiguous (a
  MySQL ``'O\\'Brien'`` ends elsewhere than a standard one), and the rest of the
  statement after its opening quote is masked with it: once out of step, a
  reading could take a value for SQL.

A statement read out of step is masked from its first string to its end. That is
what a string never closed says (a statement the SDK's length limit cut short, or
one whose value held a quote: ``'Marie L'Heureux'`` is ``'Marie L'``, then
``Heureux`` as SQL, then a quote that opens the rest), and a string closed against
a word (``'L'Heureux'``, ``'Jean d'Arc'``), which no statement writes; and a name
(``"...``) or a comment never closed. Each scan is linear: every pattern below
matches in one pass, never backtracking over what it read.
"""

from __future__ import annotations

import re

__all__ = ["BACKSLASH_SYSTEMS", "SQL_ATTRIBUTES", "mask_sql"]

SQL_ATTRIBUTES = frozenset({"db.statement", "db.query.text"})
"""Attributes holding a database statement, whose literals :func:`mask_sql` masks."""

BACKSLASH_SYSTEMS = frozenset({"mysql", "mariadb"})
"""``db.system.name`` values whose strings take backslash escapes and double quotes."""

MASK = "?"

_STANDARD = "standard"
_BACKSLASH = "backslash"
_UNKNOWN = "unknown"

# What may start a literal, or text to step over whole. A dollar quote ($$, $body$)
# starts where no name goes on (a$b$c is a PostgreSQL name). A number starts where no
# word, placeholder sign or dot is glued before it (t2, $1, ?1, :1, @p1, a.5 stay), and
# ends where no word character follows (a MySQL name such as 1st_half is not a number).
_START = re.compile(
    r"""['"`]|(?<![\w$])\$|--|/\*"""
    r"|(?<![\w$?:@.])(?:0[xX][0-9A-Fa-f]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?![\w$])"
)
_STANDARD_STRING = re.compile(r"'(?:[^']|'')*'")
_BACKSLASH_STRING = re.compile(r"'(?:[^'\\]|\\.|'')*'", re.DOTALL)
_BACKSLASH_DOUBLE = re.compile(r'"(?:[^"\\]|\\.|"")*"', re.DOTALL)
_IDENTIFIER = re.compile(r'"(?:[^"]|"")*"')
_BACKTICKS = re.compile(r"`(?:[^`]|``)*`")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_LINE_COMMENT = re.compile(r"--[^\n]*")
_WORD = re.compile(r"\w")
_REMEMBERED = 1024  # statements found to hold no literal, per dialect: most repeat
_clean: dict[tuple[str, str], None] = {}


def dialect_of(system: object) -> str:
    """How strings are read, from the span's ``db.system.name`` (or ``db.system``)."""
    if not isinstance(system, str) or not system:
        return _UNKNOWN
    return _BACKSLASH if system.lower() in BACKSLASH_SYSTEMS else _STANDARD


def mask_sql(text: str, dialect: str = _UNKNOWN) -> tuple[str, int]:
    """``text`` with each literal replaced by ``?``, and how many were replaced.

    ``dialect`` is :func:`dialect_of` the span's database system. Returns
    ``text`` itself when it holds no literal.
    """
    if (text, dialect) in _clean:
        return text, 0
    spans = _literals(text, dialect)
    if not spans:
        if len(_clean) >= _REMEMBERED:
            _clean.clear()
        _clean[text, dialect] = None
        return text, 0
    parts: list[str] = []
    kept = 0  # text[kept:span start] is copied as it is
    for start, end in spans:
        parts.append(text[kept:start])
        parts.append(MASK)
        kept = end
    parts.append(text[kept:])
    return "".join(parts), len(spans)


def _literals(text: str, dialect: str) -> list[tuple[int, int]]:
    """Where each literal of ``text`` starts and ends, in order."""
    spans: list[tuple[int, int]] = []
    first = -1  # where the first string starts: all after it is in doubt once out of step
    position = 0
    length = len(text)
    while position < length:
        found = _START.search(text, position)
        if found is None:
            break
        start, token = found.start(), found[0]
        end = found.end()
        string = token in "'\"$"  # a string of some kind, or maybe one
        if token == "'":
            end = _string_end(text, start, dialect)
        elif token == '"':
            if dialect != _BACKSLASH:  # an identifier: kept
                string = False
                end = _end_of(_IDENTIFIER, text, start)
            else:
                end = _end_of(_BACKSLASH_DOUBLE, text, start)
        elif token == "`":  # a MySQL identifier: kept
            end = _end_of(_BACKTICKS, text, start)
        elif token == "--":
            end = _end_of(_LINE_COMMENT, text, start)
        elif token == "/*":
            close = text.find("*/", start + 2)
            end = -1 if close < 0 else close + 2
        elif token == "$":
            tag = _DOLLAR_TAG.match(text, start)
            if tag is None:  # a placeholder ($1) or a name's $: nothing to mask
                string = False
            else:
                close = text.find(tag[0], tag.end())
                end = -1 if close < 0 else close + len(tag[0])
        if end < 0 or (string and token != "$" and _WORD.match(text, end)):
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


def _string_end(text: str, start: int, dialect: str) -> int:
    """Where the single-quoted string opening at ``start`` ends; -1 if it never does."""
    escapes = dialect == _BACKSLASH or (
        # PostgreSQL's E'...' takes backslash escapes: the E stands alone before the quote.
        start
        and text[start - 1] in "eE"
        and (start == 1 or not (text[start - 2].isalnum() or text[start - 2] in "_$"))
    )
    if escapes:
        return _end_of(_BACKSLASH_STRING, text, start)
    end = _end_of(_STANDARD_STRING, text, start)
    if dialect == _UNKNOWN and "\\" in text[start:end]:
        return -1  # MySQL would read it otherwise: nothing after it is certain
    return end


def _end_of(pattern: re.Pattern[str], text: str, start: int) -> int:
    """The end of ``pattern`` matched at ``start``; -1 if it never closes."""
    match = pattern.match(text, start)
    return -1 if match is None else match.end()
