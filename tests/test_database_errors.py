"""Row values in database errors of formats a red-team review found unmasked.

PostgreSQL (numeric, date/time, array and JSON input), SQL Server (duplicate key,
conversion, truncation), MongoDB (E11000, as pymongo prints it) and Elasticsearch
(a mapping error's preview) each quote the value a statement failed on. Each was
written whole, on every path, before these patterns; the messages are as the drivers
print them, the personal data fake.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from otel_json_exporter import PiiPolicy
from otel_json_exporter.pii import mask_database_values

from ._spans import PATHS, failed_operation

QUOTED_VALUES = [
    (  # psycopg, an integer column given a phone number
        'NumericValueOutOfRange: value "4165550199" is out of range for type integer',
        'NumericValueOutOfRange: value "REDACTED" is out of range for type integer',
    ),
    (
        'DatetimeFieldOverflow: date/time field value out of range: "1985-13-45"\n'
        'HINT:  Perhaps you need a different "datestyle" setting.',
        'DatetimeFieldOverflow: date/time field value out of range: "REDACTED"\n'
        'HINT:  Perhaps you need a different "datestyle" setting.',
    ),
    (
        'InvalidTextRepresentation: malformed array literal: "{Jean Tremblay,4165550199}"\n'
        'DETAIL:  Array value must start with "{" or dimension information.',
        'InvalidTextRepresentation: malformed array literal: "REDACTED"\n'
        'DETAIL:  Array value must start with "{" or dimension information.',
    ),
    (  # to_date()
        'InvalidDatetimeFormat: invalid value "Jean" for "MM"\nDETAIL:  Value must be an integer.',
        'InvalidDatetimeFormat: invalid value "REDACTED" for "MM"\n'
        "DETAIL:  Value must be an integer.",
    ),
    (
        "InvalidTextRepresentation: invalid input syntax for type json\n"
        'DETAIL:  Token "Jean" is invalid.\n'
        'CONTEXT:  JSON data, line 1: {"name": Jean...',
        "InvalidTextRepresentation: invalid input syntax for type json\n"
        'DETAIL:  Token "REDACTED" is invalid.\n'
        "CONTEXT:  JSON data, line 1: REDACTED",
    ),
    (
        "InvalidTextRepresentation: invalid input syntax for type json\n"
        'DETAIL:  Expected ":", but found "4165550199".\n'
        'CONTEXT:  JSON data, line 1: {"phone" 4165550199...',
        "InvalidTextRepresentation: invalid input syntax for type json\n"
        'DETAIL:  Expected ":", but found "REDACTED".\n'
        "CONTEXT:  JSON data, line 1: REDACTED",
    ),
    (  # pyodbc, SQL Server 2627
        "IntegrityError: ('23000', \"[23000] [Microsoft][ODBC Driver 18 for SQL Server][SQL "
        "Server]Violation of UNIQUE KEY constraint 'UQ_people_phone'. Cannot insert duplicate"
        " key in object 'dbo.people'. The duplicate key value is (Jean Tremblay, 4165550199)."
        ' (2627) (SQLExecDirectW)")',
        "IntegrityError: ('23000', \"[23000] [Microsoft][ODBC Driver 18 for SQL Server][SQL "
        "Server]Violation of UNIQUE KEY constraint 'UQ_people_phone'. Cannot insert duplicate"
        " key in object 'dbo.people'. The duplicate key value is (REDACTED)."
        ' (2627) (SQLExecDirectW)")',
    ),
    (  # SQL Server 245
        "DataError: ('22018', \"[22018] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"
        "Conversion failed when converting the nvarchar value 'Jean Tremblay' to data type "
        'int. (245) (SQLExecDirectW)")',
        "DataError: ('22018', \"[22018] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"
        "Conversion failed when converting the nvarchar value 'REDACTED' to data type "
        'int. (245) (SQLExecDirectW)")',
    ),
    (  # SQL Server 2628
        "ProgrammingError: ('42000', \"[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL "
        "Server]String or binary data would be truncated in table 'app.dbo.people', column "
        "'name'. Truncated value: 'Jean Trem'. (2628) (SQLExecDirectW)\")",
        "ProgrammingError: ('42000', \"[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL "
        "Server]String or binary data would be truncated in table 'app.dbo.people', column "
        "'name'. Truncated value: 'REDACTED'. (2628) (SQLExecDirectW)\")",
    ),
    (  # pymongo's DuplicateKeyError: the value twice more in its full error
        "DuplicateKeyError: E11000 duplicate key error collection: app.people index: phone_1 "
        "dup key: { phone: \"4165550199\" }, full error: {'index': 0, 'code': 11000, "
        "'errmsg': 'E11000 duplicate key error collection: app.people index: phone_1 dup key:"
        " { phone: \"4165550199\" }', 'keyPattern': {'phone': 1}, "
        "'keyValue': {'phone': '4165550199'}}",
        "DuplicateKeyError: E11000 duplicate key error collection: app.people index: phone_1 "
        "dup key: REDACTED",
    ),
    (  # a bulk write's error details, the value under keyValue alone
        "BulkWriteError: batch op errors occurred, full error: {'writeErrors': [{'index': 0, "
        "'code': 11000, 'keyValue': {'email_hash': 'Jean Tremblay'}}]}",
        "BulkWriteError: batch op errors occurred, full error: {'writeErrors': [{'index': 0, "
        "'code': 11000, 'keyValue': REDACTED",
    ),
    (  # elasticsearch-py
        "BadRequestError(400, 'mapper_parsing_exception', \"failed to parse field [age] of "
        "type [long] in document with id '1'. Preview of field's value: 'Jean Tremblay'\")",
        "BadRequestError(400, 'mapper_parsing_exception', \"failed to parse field [age] of "
        "type [long] in document with id '1'. Preview of field's value: 'REDACTED'\")",
    ),
]

QUOTED_VALUES += [  # a review of the above: values over lines, and three more formats
    (  # PostgreSQL quotes a value with its line breaks (psql, PostgreSQL 15)
        'NumericValueOutOfRange: value "\n4165550199" is out of range for type integer\n'
        "LINE 1: select E'\\n4165550199'::int",
        'NumericValueOutOfRange: value "REDACTED" is out of range for type integer\n'
        "LINE 1: REDACTED",
    ),
    (
        'InvalidTextRepresentation: malformed range literal: "Jean\n,4165550199"\n'
        "DETAIL:  Missing left parenthesis or bracket.",
        'InvalidTextRepresentation: malformed range literal: "REDACTED"\n'
        "DETAIL:  Missing left parenthesis or bracket.",
    ),
    (
        'InvalidDatetimeFormat: invalid input syntax for type date: "Jean\n1985"',
        'InvalidDatetimeFormat: invalid input syntax for type date: "REDACTED"',
    ),
    (  # make_date(), unquoted
        "DatetimeFieldOverflow: date field value out of range: 1985-13-45",
        "DatetimeFieldOverflow: date field value out of range: REDACTED",
    ),
    (
        'InvalidParameterValue: time zone "Jean Tremblay" not recognized',
        'InvalidParameterValue: time zone "REDACTED" not recognized',
    ),
    (  # SQL Server 248
        "DataError: The conversion of the varchar value '4165550199' overflowed an int column.",
        "DataError: The conversion of the varchar value 'REDACTED' overflowed an int column.",
    ),
]

HELD = [  # no value quoted: kept whole
    "IndexError: list index out of range",
    "NumericValueOutOfRange: integer out of range",
    "StringDataRightTruncation: value too long for type character varying(10)",
    "ValueError: invalid literal for int() with base 10",
    "the token is invalid; log in again",
]


@pytest.mark.parametrize(("error", "expected"), QUOTED_VALUES)
@pytest.mark.parametrize("path", PATHS)
def test_a_value_the_database_quotes_is_masked_on_every_path(
    tmp_path: Path, path: str, error: str, expected: str
) -> None:
    record = failed_operation(tmp_path, path, error)
    assert record["error_message"] == expected
    for value in ("Jean", "4165550199", "1985-13-45"):
        assert value not in str(record), value
    assert PiiPolicy().redact(expected) == (expected, 0)  # nothing left for later masking


@pytest.mark.parametrize("text", HELD)
def test_texts_that_quote_no_value_are_kept(text: str) -> None:
    assert mask_database_values(text) == (text, 0)


def test_these_formats_are_read_in_linear_time() -> None:
    done = threading.Event()

    def read() -> None:
        for text in (
            'value "' * 100_000,
            'value "" is out of range' * 50_000,
            'field value out of range: "' * 100_000,
            'malformed array literal: "\n' * 100_000,
            'Token "' * 100_000,
            'but found "' * 100_000,
            "JSON data, line 1: \n" * 100_000,
            "duplicate key value is (" * 100_000,
            "duplicate key value is (x).\n" * 100_000,
            "Truncated value: '" * 100_000,
            "converting the nvarchar value '" + "'" * 100_000,
            "Preview of field's value: 'x\n" * 100_000,
            "dup key: \n" * 100_000,
            "'keyValue': " * 100_000,
            'invalid input syntax for type date: "\n' * 30_000,
            'time zone "' * 100_000,
            "field value out of range: \n" * 100_000,
        ):
            mask_database_values(text)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(60)  # a hang guard, not a timing
