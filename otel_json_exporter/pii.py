"""The one PII rule: which metadata keys are personal data, and how values are masked.

A key is normalised first: a non-ASCII key is NFKC-normalised (``email`` in
full-width letters, U+FF45 ..., is ``email``), camelCase and acronym boundaries
are split (``userId`` -> ``user_id``, ``APIKey`` -> ``api_key``), it is
case-folded, and every run of characters that are not letters or digits (``.``,
``-``, spaces, the brackets of ``user[password]``) becomes ``_``; the Turkish
dotted capital I and dotless small i (U+0130, U+0131) count as ``i``. The split words
``e_mail`` and ``pass_word`` are joined again, and words written as one are split
as the rule knows them: ``apikey``, ``userid``, ``clientid``, ``sessionid``
(Django's session cookie), ``passwd``, ``firstname``, ``lastname``, ``fullname``,
``displayname``, ``customername``, ``accountname``, ``givenname``, ``familyname``,
``middlename``, ``nickname``, ``phonenumber``, ``creditcard``, ``cardnumber``,
``dateofbirth``, ``accesstoken``, ``authtoken``, ``refreshtoken``, ``clientsecret``,
``secretkey``, ``privatekey`` become ``api_key``, ``user_id``, ... ``private_key``. The
normalised key is PII when it

(a) equals a forbidden key: ``email``, ``name``, ``username``, ``password``,
    ``token``, ``key``, ``secret``, ``api_key``, ``user_id``, ``client_id``,
    ``session_id``;
(b) ends with ``_password``, ``_token``, ``_secret``, ``_key``, ``_user_id``,
    ``_client_id`` or ``_session_id``;
(c) has the token ``email``, ``username``, ``password`` or ``surname``, or the token
    ``name`` right after ``user``, ``enduser``, ``customer``, ``person``, ``first``,
    ``last``, ``full``, ``display``, ``account``, ``given``, ``middle``, ``maiden`` or
    ``nick``, or after ``family`` unless a thing's word comes before it
    (``font_family_name``);
(d) is ``authorization``, ``cookie``, ``set_cookie``, ``enduser_id`` or
    ``enduser_pseudo_id``, or ends with ``_authorization``, ``_cookie`` or
    ``_set_cookie``;
(e) is ``jsessionid`` or ``phpsessid`` (the session-id parameter and cookie
    names of Java servlets and PHP), or ends with ``_jsessionid`` or
    ``_phpsessid``. (``sid`` is not on the list: it names an Oracle database
    or a Windows security identifier as often.);
(f) is, or ends with, an identifier of a person: a phone number, a national number
    (SSN, Canada's ``social_insurance_number``), a payment card or bank account, an
    IBAN, a birth date, a passport or driver's licence, where one lives (a postal
    address or code) (:data:`_IDENTIFIER_KEYS`); as an ending, not after ``is_`` or
    ``has_`` (``is_phone`` is a yes or no).

Each rule is also tried with the digits that end each word left out
(``new_password1``); a plural is judged as its singular when that is an exact key, a
secret, ends with ``_user_id``, ``_client_id``, ``_session_id`` or ``_password``, or
meets (c) (``user_ids``, ``passwords``, ``api_keys``; not ``tokens``,
``input_tokens`` or ``num_cookies``, which count things).

So ``service.name``, ``token_count``, ``monkey`` and ``user_hash`` pass, while
``user.email``, ``x-api-key`` and ``http.request.header.cookie`` do not. A string
value is PII as well when it contains an e-mail address or a URL's user
credentials (``postgresql://admin:pw@db/app``, anything between ``//`` and the
last ``@`` before the host): :func:`contains_pii_text` finds both and
:func:`mask_text` masks both, the credentials first, so that no part of a
password is ever left behind as what looks like the start of an address.
Addresses may be non-ASCII (``jürgen@exämple.de``) and hold an apostrophe
(``mary.o'brien@...``; quotes that open the text before it are kept by the
masking); a non-ASCII string is searched in its NFKC form too, so the full-width at
sign U+FF20 is found (and an ideographic full stop before an ASCII label is read as a
dot), and a string whose PII shows only in that form is masked whole. Look-alike letters of
other scripts (a Cyrillic U+0435 for the ``e`` of ``email``) are not folded:
that is confusable detection, which this rule does not attempt.

:class:`PiiPolicy` adds the caller's own blocked and allowed keys (compared in
normalised form; a blocked key also blocks every key it ends as whole words) on top
of the rule. Nothing here ever puts a value into an
error message or a log line.
"""

from __future__ import annotations

import ast
import html
import html.entities
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, final
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from pydantic import ValidationError

from otel_json_exporter._marks import MARK_RANGES, NEWER_WORD_RANGES
from otel_json_exporter._sql import mask_sql
from otel_json_exporter.records import RecordRow, text_of

__all__ = [
    "CLIENT_ADDRESS_KEYS",
    "DEFAULT_POLICY",
    "FORBIDDEN_KEYS",
    "REDACTED",
    "PiiPolicy",
    "contains_pii_text",
    "describe_key",
    "escape_controls",
    "holds_database_values",
    "mask_cut_end",
    "mask_database_values",
    "mask_quoted_keys",
    "mask_text",
    "masked_key",
    "normalize_key",
    "percent_decoded",
    "safe_validation_message",
]

REDACTED = "[REDACTED]"
"""What an e-mail address inside a masked string becomes, or the whole string when
its PII cannot be cut out alone (found only in its NFKC form, say)."""

_CREDENTIALS_MASK = "//REDACTED:REDACTED@"
_URL_MASK = "REDACTED"  # what a PII part of a URL becomes: no characters to encode
_MAX_DECODINGS = 3  # percent-decoding layers looked through (a URL inside a parameter...)

FORBIDDEN_KEYS = frozenset(
    {
        "email", "name", "username", "password", "token", "key", "secret",
        "api_key", "user_id", "client_id", "session_id",
    }
)  # fmt: skip
"""The specification's forbidden metadata keys (rule a)."""

CLIENT_ADDRESS_KEYS = frozenset(
    {
        # The semantic conventions' client address, stable and older, on server spans
        # (network.peer.address is the server's on a client span: it goes too).
        "client.address", "client.socket.address", "network.peer.address", "net.peer.ip",
        "net.sock.peer.addr", "source.address",
        # What proxies pass on: http.client_ip and the headers an instrumentation
        # captures (http.request.header.x_forwarded_for), as endings.
        "client_ip", "x_forwarded_for", "x_real_ip", "true_client_ip", "cf_connecting_ip",
        "x_client_ip", "http.request.header.forwarded", "x_original_forwarded_for",
        "x_envoy_external_address", "x_azure_clientip", "x_appengine_user_ip",
        "cloudfront_viewer_address", "fastly_client_ip", "remote_addr", "remote_ip",
    }
)  # fmt: skip
"""Keys that carry a client's IP address, for ``PiiPolicy(blocked_keys=...)``.

IP addresses are personal data under the GDPR, but not in the default rule. A blocked
key also blocks every key it ends as whole words, so ``x_forwarded_for`` blocks the
captured header ``http.request.header.x-forwarded-for`` too.
"""

# Identifiers that name a person wherever they appear, beyond the specification's list:
# phone numbers, national numbers (a US SSN, a Canadian SIN), payment cards and
# accounts, birth dates, passports.
_IDENTIFIER_KEYS = (
    "phone", "phone_number", "telephone", "ssn", "social_security_number",
    "social_insurance_number", "credit_card", "credit_card_number", "card_number", "iban",
    "date_of_birth", "birth_date", "birthdate", "dob", "passport_number",
    # Where a person lives, and what pays or identifies them (Loi 25, PIPEDA, GDPR).
    "street_address", "home_address", "shipping_address", "billing_address",
    "mailing_address", "postal_address", "postal_code", "zip_code", "postcode", "cvv", "cvc",
    "card_security_code", "account_number", "bank_account", "routing_number",
    "driver_license", "drivers_license", "driver_license_number", "driving_licence",
    "health_card_number", "national_id", "tax_id", "security_answer", "mobile_number",
    "phone_no", "pin_code", "birthday", "national_insurance_number",
)  # fmt: skip
# The headers in which an identity proxy passes on who signed in (oauth2-proxy, Azure
# App Service, AWS ALB, Envoy's client certificate, Apache's REMOTE_USER), and where
# they are (App Engine), as a captured header (http.request.header.x_forwarded_user).
_IDENTITY_HEADERS = (
    "forwarded_user", "remote_user", "auth_request_user", "x_ms_client_principal",
    "x_ms_client_principal_name", "x_ms_client_principal_id", "x_amzn_oidc_data",
    "x_amzn_oidc_identity", "forwarded_client_cert", "ssl_client_s_dn", "citylatlong",
    "x_user", "x_auth_user",
)  # fmt: skip
_FORBIDDEN_SUFFIXES = (
    "_password", "_token", "_secret", "_key", "_user_id", "_client_id", "_session_id",
    "_authorization", "_cookie", "_set_cookie", "_jsessionid", "_phpsessid",
    *("_" + header for header in _IDENTITY_HEADERS),
)  # fmt: skip
# Credentials beyond the specification's words: a JSON Web Token (whose payload holds the
# user's address, in base64), one-time passwords, OAuth authorization codes, HTTP basic
# auth; and what a signed URL grants access with (the query parameters the semantic
# conventions tell HTTP instrumentations to redact, and kin). These only whole: as
# endings they would refuse flags and descriptions (uses_jwt, requires_basic_auth,
# valid_signature, method_signature, kill_sig), nor are their plurals (signatures: a count).
# "pin" likewise: as an ending it names a device's pin (gpio_pin).
_CREDENTIAL_WHOLE = frozenset(
    {"jwt", "otp", "totp", "basic_auth", "signature", "sig", "aws_access_key_id", "pin"}
)
# These whole or as endings: the headers that carry them (X-Goog-IAP-JWT-Assertion).
_CREDENTIAL_KEYS = (
    "jwt_assertion", "otp_code", "auth_code", "authorization_code", "x_auth", "x_otp",
    "x_jwt", "x_amz_signature", "x_goog_signature", "x_amz_credential", "verification_code",
    "client_assertion",
)  # fmt: skip
# As endings too, save after "is_" or "has_", which make a yes or no of them (is_phone).
_IDENTIFIER_SUFFIXES = tuple("_" + key for key in (*_IDENTIFIER_KEYS, *_CREDENTIAL_KEYS))
_FLAG_PREFIXES = ("is_", "has_")
# A database statement's bound values, as instrumentations record them when asked to
# (capture_parameters): db.statement.parameters, db.query.parameter.<key> and
# db.operation.parameter.<key>. A name, a phone number, a password: no key says which.
_STATEMENT_VALUES = ("db_statement_parameters", "db_query_parameter_", "db_operation_parameter_")
# Content: what people said, searched for or passed along, which instrumentations copy
# into spans whole. Free text, or a person's own values, and no key says which.
_CONTENT_WHOLE = frozenset(
    {
        # A conversation with a generative-AI model: the conventions' opt-in content (the
        # JSON of the messages), and the deprecated gen_ai.prompt and gen_ai.completion.
        "gen_ai_input_messages", "gen_ai_output_messages", "gen_ai_system_instructions",
        "gen_ai_tool_call_arguments", "gen_ai_tool_call_result", "gen_ai_prompt",
        "gen_ai_completion",
        # Speech, as the OpenAI Agents instrumentation writes it (by default).
        "gen_ai_transcription_text", "gen_ai_speech_input_text",
        # A search, as the Redis instrumentation writes FT.SEARCH's (by default).
        "redis_search_query",
        # A function's result, as google-genai's instrumentation writes a tool call's.
        "code_function_return_value",
        # A command line, as the Click instrumentation writes it (by default).
        "process_command_args", "process_command_line",
    }
)  # fmt: skip
# What a Redis search found (redis.search.xdoc_<doc>.<field>: every field of every
# document), and a GraphQL resolver's arguments (Strawberry's graphql.param.<arg>).
_CONTENT_PREFIXES = ("redis_search_xdoc_", "graphql_param_")
# OpenLLMetry's gen_ai.prompt.0.content, and google-genai's tool-call arguments
# (code.function.parameters.<name>.value; its .type stays).
_NUMBERED_CONTENT = re.compile(r"gen_ai_(?:prompt|completion)_[0-9]")
_ARGUMENT = ("code_function_parameters_", "_value")
_FORBIDDEN_EXACT = FORBIDDEN_KEYS | {
    "authorization", "cookie", "set_cookie", "enduser_id", "enduser_pseudo_id",
    "jsessionid", "phpsessid", *_IDENTIFIER_KEYS, *_CREDENTIAL_KEYS, *_IDENTITY_HEADERS,
    # The semantic conventions' other names for a person: the session before this one,
    # and the user name that owns a process or a file.
    "session_previous_id", "process_owner", "file_owner_name",
}  # fmt: skip
_ALWAYS_PII_TOKENS = frozenset({"email", "username", "password", "surname"})
_NAME_OWNERS = frozenset(
    {
        "user", "enduser", "customer", "person", "first", "last", "full", "display", "account",
        "given", "middle", "maiden", "nick",  # OpenID Connect's claims, and kin
    }
)  # fmt: skip
_THING_FAMILIES = frozenset(
    {
        "font", "os", "instance", "device", "product", "cpu", "processor", "vm", "machine",
        "browser", "model", "gpu", "chip", "platform", "typeface", "hardware", "engine",
    }
)  # fmt: skip
# Plurals of a PII key are PII (user_ids, passwords, emails, api_keys) when the singular
# is a key of the specification's or another exact one, holds a word that is PII
# anywhere, or ends with one of these; not when it only ends with another PII word, since
# "num_cookies", "num_secrets" or "input_tokens" count things. "tokens" and "keys" pass
# for the same reason; these secrets' plurals do not.
_PLURAL_SUFFIXES = ("_user_id", "_client_id", "_session_id", "_password")
_SECRET_PLURALS = frozenset(
    {
        "access_token", "refresh_token", "auth_token", "id_token", "bearer_token",
        "session_token", "csrf_token", "api_key", "private_key", "secret_key", "access_key",
        "secret_access_key",
    }
)  # fmt: skip
_DIGITS = "0123456789"

# Characters that show nothing: Unicode's format characters (category Cf: the soft
# hyphen, zero-width spaces and joiners, bidirectional controls...), fillers and
# variation selectors. Inside an address or a key they would hide it from a search;
# the folded form a non-ASCII text is also judged in leaves them out.
_INVISIBLE_CHARACTERS = (
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u115f\u1160"
    "\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f\U000e0100-\U000e01ef"
)
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARACTERS}]")
# What a folded form leaves out: those, and NUL. ASCII text in UTF-16 or UTF-32 without a
# byte-order mark is valid UTF-8 with a NUL beside each character ("p\x00a\x00s\x00s"),
# as OpenTelemetry before 1.45 decodes a bytes attribute, and as a service may decode
# such bytes itself: a password= pair or an address in it shows only without the NULs.
_FOLDED_AWAY = re.compile(f"[\x00{_INVISIBLE_CHARACTERS}]")


def _foldable(text: str) -> bool:
    """Whether ``text`` may have folded forms other than itself (see :func:`_folds`)."""
    return not text.isascii() or "\x00" in text


_TAGS = {code: code - 0xE0000 for code in range(0xE0020, 0xE007F)}
_TAG = re.compile("[\U000e0020-\U000e007e]")
# Both are zero-width, so that they take linear time on a long run of capitals
# (a "([A-Z]+)..." group backtracks: quadratic, a second for 8,000 capitals).
_ACRONYM_BOUNDARY = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")  # HTTP|Server
_ACRONYM_THEN_WORD = re.compile(r"(?<=[A-Z]{2})(?=[a-z])")  # API|key
_WORD_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_SEPARATORS = re.compile(r"[\W_]+")  # anything but a letter or a digit
# Words split by a separator or a capital (E-Mail, PassWord) that are one word.
_SPLIT_WORDS = re.compile(r"(?<![^_])(?:e_mail|pass_word)(?![^_])")
# Words written as one that the rule knows as two (apiKey's all-lower-case twin, ...).
_WORD_SPELLINGS = {
    "apikey": "api_key",
    "userid": "user_id",
    "clientid": "client_id",
    "sessionid": "session_id",
    "passwd": "password",
    "csrftoken": "csrf_token",  # Django's cookie, and its X-CSRFToken header
    "firstname": "first_name",
    "lastname": "last_name",
    "givenname": "given_name",
    "familyname": "family_name",
    "middlename": "middle_name",
    "nickname": "nick_name",
    "phonenumber": "phone_number",
    "creditcard": "credit_card",
    "cardnumber": "card_number",
    "dateofbirth": "date_of_birth",
    "fullname": "full_name",
    "displayname": "display_name",
    "customername": "customer_name",
    "accountname": "account_name",
    "accesstoken": "access_token",
    "authtoken": "auth_token",
    "refreshtoken": "refresh_token",
    "clientsecret": "client_secret",
    "secretkey": "secret_key",
    "privatekey": "private_key",
    "zipcode": "zip_code",
    "postalcode": "postal_code",
}
_ATOMIC_GROUPS = itertools.count()


def _atomic(pattern: str) -> str:
    """``pattern`` matched atomically: what it matches first is kept, never backtracked.

    As ``*+`` and ``(?>...)`` do from Python 3.11; this package supports 3.10, whose
    ``re`` has neither. A look-ahead is atomic in every version: it takes the match,
    and a back-reference to it consumes exactly that. Each call names its own group.
    """
    name = f"_atomic{next(_ATOMIC_GROUPS)}"
    return f"(?=(?P<{name}>{pattern}))(?P={name})"


# The quotes that open a run of address characters ('bob@x.io' in a repr), and what a
# password runs over: each taken whole, never backtracked.
_OPENING_QUOTES = _atomic("['\u2019]*")
_PASSWORD_RUN = _atomic(r"(?:(?!//)[^\s@])*")

# A local part's characters, with the apostrophe, straight or typographic (U+2019), so
# that no part of ``mary.o'brien@...`` is left before the mask. (RFC 5322's other
# symbols are left out: ``*@example.com`` is a pattern, ``ERROR|bob@x.io`` a log line.)
# The invisible characters too, so that one inside a local part (``alice<U+200B>.smith@``)
# does not leave what comes before it unmasked. Combining marks, which \w does not take,
# are read as letters (see _searchable).
# So are the control characters that show nothing when printed and are no white space
# (NUL to backspace, SO to ESC, DEL, the C1 controls but NEL): alice.smith<DEL>@... is
# alice.smith@... on a terminal, and the C1 controls are what a latin-1 reading of UTF-8
# makes of a character (WSGI's environ: U+2019 becomes U+00E2 U+0080 U+0099).
_SILENT_CONTROLS = r"\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f"
_UNESCAPED_LOCAL_PART = rf"[\w.+'\u2019{_INVISIBLE_CHARACTERS}{_SILENT_CONTROLS}-]"
_LOCAL_PART = "[%" + _UNESCAPED_LOCAL_PART[1:]  # and "%", which starts an escape
# The look-behind makes a match start only where a run of address characters
# starts; without it a long run before a lone "@" took quadratic time. The quotes
# that open the run (``'bob@x.io'`` in a repr) are matched apart, possessively, and
# kept by the masking. The "@" may be percent-encoded ("%40"), as in a URL quoted in an
# error message ("Not Found for url: https://api.example.com/users/ann%40example.com").
# Before an encoded "%40", the local part holds no other escape but "%2B" ("+"), "%27"
# (an apostrophe: urllib.parse.quote encodes "mary.o'brien" so) and a
# character beyond ASCII, its UTF-8 bytes encoded ("jos%C3%A9%40x.io", as a client
# quotes josé@x.io in a path): in "cc%20%40john.doe" the "%20" is a space, and
# "@john.doe" a mention, no address. The domain may hold such a character too.
# A backslash escape of a character, as json.dumps (\u00e9) and repr (\xe9, \udce9: a
# file name's undecodable byte) write one inside an address, in its domain too. A match
# never starts inside a whole escape, so that a long run of them is read once; after
# any other backslash it may (C:\reports\xavier@x.io: "\xav" is no escape;
# "line1\nbob@x.io" loses the "n" to the mask).
_ESCAPE = r"\\(?:u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|U[0-9A-Fa-f]{8})"
_NOT_AFTER_LOCAL_PART = (
    rf"(?<!{_LOCAL_PART})(?!(?<=\\)(?:u[0-9A-Fa-f]{{4}}|x[0-9A-Fa-f]{{2}}|U[0-9A-Fa-f]{{8}}))"
)
# Runs of these, written as a class's run between escapes ("unrolled"): each way through
# is forced, so a failed match gives back in linear time, and a class's run is matched
# in C, not one alternation a character (five to sixteen times as slow on long runs).
_LOCAL_RUN = rf"(?:{_LOCAL_PART}|{_ESCAPE}){_LOCAL_PART}*(?:{_ESCAPE}{_LOCAL_PART}*)*"
# A character's UTF-8 bytes, percent-encoded: a lead byte, then one to three others.
_PERCENT_UTF8 = r"%(?:[CcDdEe][0-9A-Fa-f]|[Ff][0-4])(?:%[89ABab][0-9A-Fa-f]){1,3}"
_ENCODED_ESCAPE = rf"(?:%2[7Bb]|{_PERCENT_UTF8}|{_ESCAPE})"
_ENCODED_RUN = (
    rf"(?:{_UNESCAPED_LOCAL_PART}|{_ENCODED_ESCAPE})"
    rf"{_UNESCAPED_LOCAL_PART}*(?:{_ENCODED_ESCAPE}{_UNESCAPED_LOCAL_PART}*)*"
)
_LOCAL_BEFORE_AT = rf"(?:{_LOCAL_RUN}@|{_ENCODED_RUN}%40)"
# Inside a percent-encoded run a word starts after an escape ("q=to%3Aelise%40x.io"), or
# after a "%" that starts none ("50%\u00e9lise%40x.io"), where the look-behind above would
# not let a match start: one before "%40" may start there, and runs only to the next
# escape that no run holds, so that each part of a run is read once. (Not after "%2B", "%27",
# nor after the bytes of an encoded character: a run holds them.)
_LEAD = "%[CcDdEeFf][0-9A-Fa-f]"
_FOLLOWING = "%[89ABab][0-9A-Fa-f]"
_AFTER_AN_ESCAPE = (
    rf"(?:(?<=%[0-9A-Fa-f]{{2}})(?<!%2[7Bb])(?<!{_LEAD}{_FOLLOWING})"
    rf"(?<!{_LEAD}{_FOLLOWING}{_FOLLOWING})(?<!{_LEAD}{_FOLLOWING}{_FOLLOWING}{_FOLLOWING})"
    r"|(?<=%)(?![0-9A-Fa-f]{2}))"
)
# A domain's characters, with the silent controls too (ann@exa<DEL>mple.com); its last
# label may be escaped as the others (json.dumps writes ivan@\u043f...\u0440\u0444 so).
_DOMAIN_CHARACTER = rf"[\w{_SILENT_CONTROLS}-]"
_DOMAIN_ESCAPE = rf"(?:{_PERCENT_UTF8}|{_ESCAPE})"
_DOMAIN_LABEL = (
    rf"(?:{_DOMAIN_CHARACTER}|{_DOMAIN_ESCAPE}){_DOMAIN_CHARACTER}*"
    rf"(?:{_DOMAIN_ESCAPE}{_DOMAIN_CHARACTER}*)*"
)
_DOMAIN = (
    rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*"
    rf"\.(?:(?:[^\W\d_]|{_DOMAIN_ESCAPE})[{_SILENT_CONTROLS}]*){{2,}}"
)
# What a cut leaves of a domain: "%" too, as a cut may end inside an encoded character.
_DOMAIN_RUN = rf"[\w.%{_SILENT_CONTROLS}-]*(?:{_ESCAPE}[\w.%{_SILENT_CONTROLS}-]*)*"
# And what a cut leaves of an escape or an HTML character reference at the very end
# ("jean@ex\\u00", "jean@ex&eac" of "jean@ex&eacute;mple.ca").
_CUT_TAIL = r"(?:\\(?:[uxU][0-9A-Fa-f]{0,7})?|&#?[A-Za-z0-9]{0,31})?"
_EMAIL = (
    rf"{_NOT_AFTER_LOCAL_PART}(?P<quotes>{_OPENING_QUOTES}){_LOCAL_BEFORE_AT}{_DOMAIN}"
    rf"|{_AFTER_AN_ESCAPE}{_ENCODED_RUN}%40{_DOMAIN}"
)
# A URL's userinfo: from "//" to the last "@" before the host, as urlsplit reads it;
# or, when that finds none, a "user:password" whose password holds "/", "?" or "#"
# unencoded (postgresql://admin:pa#ss@db/app, which URL syntax forbids but some
# connection strings hold), to the last "@" before white space or the next "//". Not
# taken for a password: a port ("host:8443/p?email=a@b.io", "db1:27017,db2:27017/x")
# or an IPv6 host ("[::1]:3000/@me"). Possessive, and stopped at "//": a text of many
# "//a:" and no "@" after them is read in linear time (a plain \S*@ is quadratic).
_CREDENTIALS = (
    r"//(?:[^\s/?#]*@"
    r"|[^\s/?#@:\[]*:(?![0-9]*(?:[/?#,]|$))" + _atomic(f"(?:{_PASSWORD_RUN}@)+") + ")"
)
# An address, or URL credentials, that the text's end cuts short: the SDK's attribute
# length limit cuts a value without looking (``ann.lee@exa``, ``//admin:s3c``). The
# local part and what is left of the domain, or the user and what is left of the
# password, run to the end. A port is not taken for a password cut short, nor the
# host after credentials masked already (``//REDACTED:REDACTED@db``) for an address.
# A cut inside the escape itself ("jean.tremblay%4") counts too, when the local part
# holds a letter: "50%" at the end of a cut value stays.
_CUT_CREDENTIALS = rf"//[^\s/?#@:\[]*:(?![0-9]*(?:[/?#,]|\Z)){_PASSWORD_RUN}\Z"
# A local part cut inside its "%40" ("jean%4"): only with a letter in it ("50%" stays).
_CUT_ENCODED = (  # a backslash escape counts as a letter: it is one ("\u00e9")
    rf"(?=(?:{_UNESCAPED_LOCAL_PART}|%2[7Bb])*?(?:[^\W\d_]|{_DOMAIN_ESCAPE}))"
    rf"{_ENCODED_RUN}%4?\Z"
)
_CUT_END = re.compile(
    rf"(?P<credentials>{_CUT_CREDENTIALS})"
    rf"|{_NOT_AFTER_LOCAL_PART}(?<!//REDACTED:)(?P<quotes>{_OPENING_QUOTES})"
    rf"(?:{_LOCAL_BEFORE_AT}{_DOMAIN_RUN}{_CUT_TAIL}\Z|{_CUT_ENCODED})"
    rf"|{_AFTER_AN_ESCAPE}(?:{_ENCODED_RUN}%40{_DOMAIN_RUN}{_CUT_TAIL}\Z|{_CUT_ENCODED})"
)
# Credentials already masked are matched first and skipped, so that masking is
# idempotent and its output ("https://REDACTED:REDACTED@h.example") is not taken
# for credentials or for the address "REDACTED@h.example" when checked again.
_PII_TEXT = re.compile(
    f"(?P<masked>{re.escape(_CREDENTIALS_MASK)})|(?P<credentials>{_CREDENTIALS})|{_EMAIL}"
)
# Credentials cut short and percent-encoded, as in a URL's parameter
# (?next=postgresql%3A%2F%2Fadmin%3As3cr): they start at the last "//" in any of its
# forms, since the password cannot hold "//" (see _CUT_END); the possible starts are found
# with a look-ahead, so that of "///" or "%2F%2F%2F" the last pair is among them.
_CUT_CREDENTIALS_DECODED = re.compile(_CUT_CREDENTIALS)
_SLASHES = re.compile(r"(?=(?:/|%(?:25){0,2}2[Ff]){2})")
# Credentials alone, masked before urlsplit reads a URL (see PiiPolicy._mask_url).
_CREDENTIALS_ONLY = re.compile(
    f"(?P<masked>{re.escape(_CREDENTIALS_MASK)})|(?P<credentials>{_CREDENTIALS})"
)
_NETLOC_MASK = _CREDENTIALS_MASK.removeprefix("//")
# ``name=value`` anywhere in free text, where the name starts a word or follows one of
# ``?#;&/`` (a URL's query, fragment, path parameters or a path segment such as
# ``/profile/name=Alice``, or ``password=...`` in a message). The value stops at the
# next of ``?#;&`` or white space, not at "/" (a token's base64 may hold one), so a URL
# nested unencoded in a parameter (``next=https://x/cb?token=t``) shows its own
# parameters as further matches.
_PARAMETER = re.compile(r"(?<![^\s?#;&/])(?P<name>[^\s=?#;&/]+)=(?P<value>[^\s?#;&]*)")
# Every "/name=" of a path, also inside the value of an earlier one (/a=1/password=p),
# and every ",name=" of comma-separated pairs (host=db1,user=sa,password=p), where
# _PARAMETER, whose matches do not overlap, would not look: a name is short, so this
# reads the text once. A value runs to the next of ``?#;&`` or white space.
_SEGMENT_NAME = re.compile(r"[/,](?P<name>[^\s=?#;&/,]+)=")
_VALUE_END = re.compile(r"[\s?#;&]")
_IDEOGRAPHIC_DOT = re.compile("\u3002(?=[A-Za-z0-9])")
_NOT_ONLY_PARAMETERS = re.compile(r"[@%/;?#,\s\x00]")
_WORD = re.compile(r"[^\W_]+")
_TURKISH_I = {ord("\u0130"): "I", ord("\u0131"): "i"}
_CACHE_LIMIT = 4096
_REMEMBERED_TEXT_LENGTH = 1024
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def normalize_key(key: str) -> str:
    """Normalise a key for the PII rule: ``"x-API-Key"`` -> ``"x_api_key"``."""
    if not key.isascii():
        # Turkish capital dotted I (U+0130) and small dotless i (U+0131), as a tr-TR
        # locale's case mapping writes "USER_ID" and "session_id": casefold() would make
        # the first "i" and a combining dot, which separates words.
        key = key.translate(_TURKISH_I)
        key = unicodedata.normalize("NFKC", key)  # an invisible character separates words
    key = _ACRONYM_BOUNDARY.sub("_", key)
    key = _WORD_BOUNDARY.sub(r"\1_\2", key)
    words = _SEPARATORS.split(key.casefold())
    normalized = "_".join(_WORD_SPELLINGS.get(word, word) for word in words if word)
    if "e_mail" in normalized or "pass_word" in normalized:
        return _SPLIT_WORDS.sub(lambda match: match[0].replace("_", ""), normalized)
    return normalized


def _spellings(key: str) -> set[str]:
    """The normalised forms a key is judged by: every reading of it, each three ways.

    The readings are the key as written, its NFKC form and, with invisible
    characters, each way of reading those. Each is normalised as it is, case-folded
    first (odd casing must not hide a word: ``emaIL``, ``PASSword``), and with an
    acronym split from the word glued to it (``APIkey``, ``DBpassword``).
    """
    forms = set()
    readings = {key}  # as written: NFKC may join e + U+0301 into an é no rule splits at
    if _foldable(key):
        folded = unicodedata.normalize("NFKC", key)
        readings.add(folded)
        if _FOLDED_AWAY.search(folded):
            # An invisible character may join a word (passw<soft hyphen>ord), split
            # two (customer<zero-width space>email), or hide as a letter (a Hangul
            # filler): each reading counts, and so do tag characters read as the
            # ASCII they copy.
            for text in (key, folded):
                readings.update((_FOLDED_AWAY.sub("", text), _FOLDED_AWAY.sub("_", text)))
            readings.update(_folds(folded))
    for reading in readings:
        forms.add(normalize_key(reading))
        if not reading.islower():
            forms.add(normalize_key(reading.casefold()))
            forms.add(normalize_key(_ACRONYM_THEN_WORD.sub("_", reading)))
    return forms


def _rule_says_pii(normalized: str) -> bool:
    """The rule, on a normalised key; numbered words (``password2``, ``new_password1``,
    ``api_key_2``) are judged without their numbers, and a plural as its singular."""
    if _words_say_pii(normalized):
        return True
    bare = "_".join(_unnumbered(normalized.split("_")))
    if bare != normalized and _words_say_pii(bare):
        return True
    if len(bare) > 1 and bare.endswith("s") and not bare.endswith("ss"):
        singular = bare[:-1]
        if singular in ("token", "key"):
            return False
        return (
            singular in _FORBIDDEN_EXACT
            or singular in _SECRET_PLURALS
            or singular.endswith(_PLURAL_SUFFIXES)
            or _words_name_pii(singular)
        )
    return False


def _unnumbered(words: list[str]) -> list[str]:
    """``words`` without the digits that end them, and without those that were digits only."""
    return [word for word in (word.rstrip(_DIGITS) for word in words) if word]


def _words_say_pii(normalized: str) -> bool:
    if (
        normalized.startswith(_STATEMENT_VALUES)
        or _is_content(normalized)
        or normalized in _FORBIDDEN_EXACT
        or normalized in _CREDENTIAL_WHOLE
        or normalized.endswith(_FORBIDDEN_SUFFIXES)
    ):
        return True
    if normalized.endswith(_IDENTIFIER_SUFFIXES) and not normalized.startswith(_FLAG_PREFIXES):
        return True
    return _words_name_pii(normalized)


def _is_content(normalized: str) -> bool:
    """Rule 9: a key under which an instrumentation copies content whole."""
    return (
        normalized in _CONTENT_WHOLE
        or normalized.startswith(_CONTENT_PREFIXES)
        or _NUMBERED_CONTENT.match(normalized) is not None
        or (normalized.startswith(_ARGUMENT[0]) and normalized.endswith(_ARGUMENT[1]))
    )


def _words_name_pii(normalized: str) -> bool:
    """Rule 3: a word that is PII anywhere, or ``name`` after a word that says whose."""
    tokens = normalized.split("_")
    if not _ALWAYS_PII_TOKENS.isdisjoint(tokens):
        return True
    return any(
        token == "name"
        and index > 0
        and (
            tokens[index - 1] in _NAME_OWNERS
            # "family_name" is a person's (claims.family_name), save after a word that
            # makes it a thing's: a font's, an OS's, an instance type's.
            or (
                tokens[index - 1] == "family"
                and (index == 1 or tokens[index - 2] not in _THING_FAMILIES)
            )
        )
        for index, token in enumerate(tokens)
    )


def _has_at_sign(text: str) -> bool:
    """Whether ``text`` holds an "@", plain or percent-encoded: no address without one."""
    return "@" in text or "%40" in text


# A combining mark (a decomposed accent, the vowel signs of Indic and Thai scripts) is
# part of a word, yet not a word character to \w; nor is U+FFFD, what a lone surrogate
# (an undecodable byte of a file name) becomes in a span's text. Inside an address both
# must count, or what comes before them is left unmasked (andre + U+0301 + .dupont@...),
# and an address ending its local part with one is not found at all. The patterns
# search a copy with each read as a letter, of the same length, so that the positions
# found are the text's own: a class of the 2,400 marks in the patterns cost 20 ms at import.
_AS_LETTERS = {code: "a" for first, last in MARK_RANGES for code in range(first, last + 1)}
_AS_LETTERS[0xFFFD] = "a"
# So are the letters and digits of a Unicode newer than this Python's: unassigned here,
# they are no \w, and cut an address as a mark did (U+9FFF, a CJK ideograph, on 3.10;
# U+2EBF0, of CJK Extension I, up to 3.12). None is added on 3.13.
_AS_LETTERS.update(
    (code, "a")
    for first, last in NEWER_WORD_RANGES
    for code in range(first, last + 1)
    if not chr(code).isalnum()
)


# UTF-8 read as latin-1 or cp1252, as an ASGI server decodes headers and WSGI's environ
# holds them: each character after the first becomes two to four, the first byte a
# letter of U+00C2 to U+00F4 (or U+00D7, the multiplication sign), the others a
# character of U+0080 to U+00BF or cp1252's symbol for the byte: "zo\u00eb" becomes
# "zo\u00c3\u00ab", whose "\u00ab" is a guillemet, no \w. Such a run is read as letters,
# so that it cuts no address (the C1 controls among them already count, as
# _SILENT_CONTROLS). Each of its characters may be written as an HTML character
# reference too: PHP's htmlentities(), with its old default charset (ISO-8859-1),
# writes jos\u00e9 misread as "jos&Atilde;&copy;".
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))
_CONTINUATIONS = "".join(
    sorted(
        set(_CONTINUATION_BYTES.decode("latin-1"))
        | set(_CONTINUATION_BYTES.decode("cp1252", "replace"))  # U+FFFD: 0x81, 0x8D...
    )
)


def _written(characters: str, references: bool) -> str:
    """A pattern for one of ``characters`` (none of them ASCII): as itself, or with
    ``references`` as an HTML character reference too (named, decimal or hexadecimal,
    with leading zeros or not)."""
    if not references:
        return f"[{characters}]"
    names = sorted(
        name[:-1]
        for name, value in html.entities.html5.items()
        if name.endswith(";") and len(value) == 1 and value in characters
    )
    decimal = "|".join(str(ord(character)) for character in characters)
    hexadecimal = "|".join(f"{ord(character):x}" for character in characters)
    return f"(?:[{characters}]|&(?:{'|'.join(names)}|#0*(?:{decimal})|#[Xx]0*(?i:{hexadecimal}));)"


def _misread(references: bool) -> re.Pattern[str]:
    """UTF-8 misread, as above: characters only, or written in references too."""
    lead = _written("".join(map(chr, range(0xC2, 0xF5))), references)
    return re.compile(f"{lead}{_written(_CONTINUATIONS, references)}{{1,3}}")


_MOJIBAKE = _misread(references=False)
_MOJIBAKE_OR_REFERENCES = _misread(references=True)  # slower: only for text with "&"


# An HTML character reference, as an HTML page quoted in an error writes a letter
# ("jos&eacute;@x.io", "jos&#233;@x.io", "jos&#x0000E9;@x.io"); one for a character that
# a local part holds (a letter, a digit, an apostrophe, "+", "_", ".", "-", a soft
# hyphen: "&shy;", which pages put into long words so that they wrap; a combining mark)
# counts as letters. (One for "@" itself, "&#64;", is out of scope, as README says.)
_CHARACTER_REFERENCE = re.compile(
    r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#0*[0-9]{1,7}|#[Xx]0*[0-9A-Fa-f]{1,6});"
)
_LOCAL_CHARACTER = re.compile(_UNESCAPED_LOCAL_PART)


def _as_letters(match: re.Match[str]) -> str:
    return "a" * len(match[0])


def _reference_as_letters(match: re.Match[str]) -> str:
    character = html.unescape(match[0])
    if len(character) == 1 and (
        _LOCAL_CHARACTER.fullmatch(character) is not None or ord(character) in _AS_LETTERS
    ):
        return "a" * len(match[0])
    return match[0]


def _searchable(text: str) -> str:
    """``text`` with combining marks, letters newer than this Python's Unicode, U+FFFD,
    UTF-8 misread as latin-1 or cp1252 and HTML references to what a local part holds as
    letters, for the address patterns; the same length, so that the positions found are
    the text's own."""
    is_ascii = text.isascii()
    if "&" in text and ";" in text:  # misread UTF-8 may be written in references, all ASCII
        text = _MOJIBAKE_OR_REFERENCES.sub(_as_letters, text)
        text = _CHARACTER_REFERENCE.sub(_reference_as_letters, text)
    elif not is_ascii:
        text = _MOJIBAKE.sub(_as_letters, text)
    return text if is_ascii else text.translate(_AS_LETTERS)


def _search(text: str) -> re.Match[str] | None:
    for match in _PII_TEXT.finditer(_searchable(text)):
        if not match["masked"]:
            return match
    return None


def _folds(text: str) -> list[str]:
    """The folded forms of a non-ASCII string, or one holding NUL: NFKC without invisible
    characters and NULs, the ideographic full stop before an ASCII letter or digit read
    as ".".

    Tag characters (U+E0020 to U+E007E, an invisible copy of ASCII) are read
    both ways: left out (``bob<tag space>@x.io`` is an address) and as the ASCII
    they copy (a value hidden in them). Forms equal to ``text`` are left out.
    """
    if not unicodedata.is_normalized("NFKC", text):
        text_nfkc = unicodedata.normalize("NFKC", text)
    else:
        text_nfkc = text
    if "\u3002" in text_nfkc:
        # The ideographic full stop, which NFKC keeps (and makes of the half-width
        # one), separates a domain's labels as "." does (IDNA reads it so):
        # tanaka@example\u3002co\u3002jp is an address. Only before an ASCII label, as
        # an input method in full-width mode writes an address; before Japanese text
        # it ends a sentence (a mention, "@tanaka" + U+3002, is no address).
        text_nfkc = _IDEOGRAPHIC_DOT.sub(".", text_nfkc)
    forms = [_FOLDED_AWAY.sub("", text_nfkc)]
    if _TAG.search(text_nfkc):
        forms.append(_FOLDED_AWAY.sub("", text_nfkc.translate(_TAGS)))
    return [form for form in forms if form != text]


def _search_folded(text: str) -> re.Match[str] | None:
    """Search the folded forms of a non-ASCII string (a full-width at sign, U+FF20, or
    a zero-width space inside an address)."""
    for folded in _folds(text):
        if _has_at_sign(folded):
            match = _search(folded)
            if match is not None:
                return match
    return None


def _find_pii_text(text: str) -> re.Match[str] | None:
    match = _search(text) if _has_at_sign(text) else None
    if match is None and _foldable(text):
        match = _search_folded(text)
    return match


def contains_pii_text(text: str) -> bool:
    """Whether a string contains an e-mail address or a URL's user credentials."""
    return _find_pii_text(text) is not None


def _mask_matches(pattern: re.Pattern[str], text: str) -> tuple[str, int]:
    """Every match of ``pattern`` (:data:`_PII_TEXT` or ``_CREDENTIALS_ONLY``) in ``text``
    masked, those already masked kept; and how many were masked."""
    parts: list[str] = []
    last = 0
    for match in pattern.finditer(_searchable(text)):  # its positions are the text's
        if match["masked"]:
            continue
        # An address's mask keeps the quotes before it.
        mask = _CREDENTIALS_MASK if match["credentials"] else (match["quotes"] or "") + REDACTED
        parts += (text[last : match.start()], mask)
        last = match.end()
    if not parts:
        return text, 0
    parts.append(text[last:])
    return "".join(parts), len(parts) // 2


# The row values a database error quotes, each pattern linear (possessive runs, one match
# per start, consumed to its end): SQLAlchemy's "[parameters: ...]" (to its
# "(Background on this error" line: a value's repr may span lines); PostgreSQL's
# "Key (cols)=(values) already exists" (a value may span lines), "Failing row contains
# (...)" and 'invalid input syntax for type integer: "..."'; MySQL's "Duplicate entry
# '...' for key" and "Incorrect integer value: '...'".
_KEY_ENDINGS = r"already exists|is not present|is still referenced|is duplicated|conflicts with"
_COLUMNS = _atomic(r"(?:[^()\n]|\([^()\n]*\))*")
_TYPE_NAME = _atomic(r"[\w ]{1,64}")
_WORD_RUN = _atomic(r"\w{1,32}")
# Where a value PostgreSQL quotes ends when it may span lines: its closing quote before
# the message's next part (DETAIL:, HINT:, LINE 1:...) or the end of the text.
_PG_VALUE_END = r'"\.?[ \t]*(?:\n(?:DETAIL|HINT|LINE \d|CONTEXT|QUERY|WHERE)\b|\s*\Z)'
_DATABASE_VALUES = re.compile(
    r"(?P<parameters>\[parameters: )(?!REDACTED)(?s:.)*?(?=\n\(Background on this error|\Z)"
    # Columns may be an expression, "lower(full_name::text)": one level of parentheses.
    # A value runs to its known ending, even over lines, or else to the end of its line.
    rf"|(?P<key>\b[Kk]ey \({_COLUMNS}\)=\()(?!REDACTED)"
    rf"(?:(?s:.){{0,4000}}?(?=\) (?:{_KEY_ENDINGS}))|[^\n]*)"
    r"|(?P<row>\bFailing row contains \()(?!REDACTED)"
    r"(?:(?s:.){0,4000}?(?=\)\.?[ \t]*(?:\n|\Z))|[^\n]*)"
    # PostgreSQL escapes neither quotes nor line breaks inside the value: it ends at the
    # last quote before the next line of the message (DETAIL:, HINT:...) or the end, else
    # at the line's last quote.
    rf'|(?P<input>\binvalid input (?:syntax|value) for {_TYPE_NAME}: ")(?!REDACTED)'
    rf"(?:(?s:.){{0,4000}}?(?={_PG_VALUE_END})|"
    r'[^\n]*?(?="[ \t]*(?:\n|\Z)|\n|\Z))'
    r"|(?P<entry>\bDuplicate entry ')(?!REDACTED)(?s:.)*?(?=' for key|\Z)"
    rf"|(?P<incorrect>\b[Ii]ncorrect {_WORD_RUN} value: ')(?!REDACTED)"
    r"(?:[^\n]{0,4000}?(?=' for column)|[^\n]*?(?='[ \t]*(?:\n|\Z)|\n|\Z))"
    # A syntax error quotes the statement, values and all: SQLite's 'near "...": syntax
    # error' and 'unrecognized token: "..."', PostgreSQL's 'at or near "..."' (to the
    # line's last quote) and its "LINE 1: <the statement>", MySQL's "near '<the rest of
    # the statement>' at line 1". Not closed on its line, the quote runs to the end.
    r'|(?P<near>\bnear "|\bunrecognized token: ")(?!REDACTED)'
    r'(?:[^\n]*?(?=": syntax error|"[ \t]*(?:\n|\Z))|(?s:.)*)'
    r"|(?P<rest>\bnear ')(?!REDACTED)(?:[^\n]*?(?=' at line \d)|(?s:.)*)"
    r"|(?P<line>(?m:^)LINE \d{1,9}: )(?!REDACTED)[^\n]*"
    # PostgreSQL's "QUERY:  <statement>" and 'CONTEXT:  SQL statement "<statement>"',
    # after an error in a function's statement (to the line's last quote); SQL Server's
    # "Unclosed quotation mark after the character string '<the rest>'." (to the line's
    # last "'."). Not closed on its line, the quote runs to the end.
    r"|(?P<query>(?m:^)QUERY: {1,2})(?!REDACTED)[^\n]*"
    r'|(?P<context>\bSQL statement ")(?!REDACTED)(?:[^\n]*(?="[ \t]*(?:\n|\Z))|(?s:.)*)'
    r"|(?P<unclosed>\bafter the character string ')(?!REDACTED)(?:[^\n]*(?='\.)|(?s:.)*)"
    # More that quote a value: PostgreSQL's 'value "..." is out of range for type ...',
    # 'date/time field value out of range: "..."' (an interval's too, and a time zone's
    # displacement), 'malformed array literal: "..."' (a record's, a range's...),
    # to_date's 'invalid value "..." for "MM"', a JSON value's 'Token "..." is invalid'
    # and '..., but found "..."' (to their ending, or the line's last quote) and its
    # "JSON data, line 1: ..." (to the line's end); SQL Server's "The duplicate key value
    # is (...)", "Truncated value: '...'" and "converting the nvarchar value '...' to data
    # type", and Elasticsearch's "Preview of field's value: '...'" (to the line's last
    # closing mark); MongoDB's "dup key: { ... }" and its "'keyValue': {...}" (to the
    # line's end: pymongo's full error repeats them).
    r'|(?P<quoted>\bvalue "|\b(?:field value|displacement) out of range: "'
    r'|\bmalformed \w{1,32} literal: "|\bToken "|\bbut found "|\btime zone ")(?!REDACTED)'
    r'(?:(?s:.){0,4000}?(?=" is out of range|" for "|" is invalid|" not recognized'
    rf"|{_PG_VALUE_END})"
    r'|[^\n]*?(?=" is out of range|" for "|" is invalid|" not recognized|"\.?[ \t]*(?:\n|\Z)'
    r"|\n|\Z))"
    # make_date()'s, unquoted: to the end of the line.
    r"|(?P<unquoted>\bfield value out of range: )(?![\"']|REDACTED)[^\n]*"
    r"|(?P<json>\bJSON data, line \d{1,9}: )(?!REDACTED)[^\n]*"
    r"|(?P<duplicate>\bduplicate key value is \()(?!REDACTED)(?:[^\n]*(?=\)\.)|[^\n]*)"
    r"|(?P<single>\bTruncated value: '|\bconverting the \w{1,32} value '"
    r"|\bconversion of the \w{1,32} value '"
    r"|\bPreview of field's value: ')(?!REDACTED)(?:[^\n]*(?='[^'\n]*(?:\n|\Z))|[^\n]*)"
    r"|(?P<mongo>\bdup key: |['\"]keyValue['\"]: )(?!REDACTED)[^\n]*"
    # SQLAlchemy's "[SQL: ...]": the statement, its literals masked as a span's are.
    r"|(?P<statement>\[SQL: )"
    r"(?:(?s:.)*?(?=\]\n\[parameters: |\]\n\(Background on this error|\]\Z)|(?s:.)*)"
)
_CLOSING = {"parameters": "]"}  # the other patterns stop before their closing mark


def holds_database_values(text: str) -> bool:
    """Whether ``text`` may quote row values the way a database error does (cheap)."""
    return (
        "[parameters: " in text
        or ")=(" in text
        or "Failing row contains" in text
        or "invalid input " in text
        or "Duplicate entry" in text
        or "ncorrect " in text
        or 'near "' in text
        or "near '" in text
        or "unrecognized token" in text
        or "LINE " in text
        or "QUERY: " in text
        or 'SQL statement "' in text
        or "character string '" in text
        or "[SQL: " in text
        or '" is out of range' in text
        or 'out of range: "' in text
        or ' literal: "' in text
        or 'invalid value "' in text
        or 'Token "' in text
        or 'but found "' in text
        or "JSON data, line " in text
        or "duplicate key value is (" in text
        or "Truncated value: '" in text
        or "Conversion failed when converting the " in text
        or "conversion of the " in text
        or "field value out of range: " in text
        or 'time zone "' in text
        or "Preview of field's value: '" in text
        or "dup key: " in text
        or "keyValue" in text
    )


def mask_database_values(text: str) -> tuple[str, int]:
    """The row values a database error quotes, masked; and how many were.

    An ORM's or a driver's error carries the values of the failed statement: a
    name, a phone number, a password, unlabelled, so that no key rule can tell
    them. SQLAlchemy's ``[parameters: ...]`` becomes ``[parameters: REDACTED]``,
    PostgreSQL's ``Key (email)=(...)`` ``Key (email)=(REDACTED)``, and so on for
    the formats listed above; in SQLAlchemy's ``[SQL: ...]`` each literal becomes
    ``?`` (:func:`~otel_json_exporter._sql.mask_sql`). Run before the other masking,
    which would take ``(name)=(Jean`` for a ``name=value`` and break the pattern.
    """
    if not holds_database_values(text):
        return text, 0

    masked = 0

    def mask(match: re.Match[str]) -> str:
        nonlocal masked
        kind = match.lastgroup or ""
        if kind == "statement":
            statement, literals = mask_sql(match[0][len(match[kind]) :])
            masked += literals
            return match[kind] + statement
        masked += 1
        return match[kind] + "REDACTED" + _CLOSING.get(kind, "")

    return _DATABASE_VALUES.sub(mask, text), masked


def mask_text(text: str) -> tuple[str, int]:
    """``text`` with URL credentials and e-mail addresses masked, and how many were.

    >>> mask_text("postgresql://admin:pw@db.example.com/app for ann@example.org")
    ('postgresql://REDACTED:REDACTED@db.example.com/app for [REDACTED]', 2)
    """
    if type(text) is not str:
        text = text_of(text)
    if _has_at_sign(text):
        masked, count = _mask_matches(_PII_TEXT, text)
        if count:
            # Masking one match may uncover another (".@b.io" right after a masked
            # address starts a match only once the address is gone), and the NFKC
            # form may hold more: then it all goes.
            return (REDACTED, count) if _find_pii_text(masked) is not None else (masked, count)
    if _foldable(text) and _search_folded(text) is not None:
        # Found only in the NFKC form, whose positions do not map back: mask it all.
        return REDACTED, 1
    return text, 0


def mask_cut_end(text: str) -> tuple[str, int]:
    """:func:`mask_text`, and an address or URL credentials that the end cuts short masked.

    For a text that may have been cut to a length limit, as the SDK cuts attribute
    values longer than ``SpanLimits.max_attribute_length``: what is left of an
    address or a password is no longer an address or credentials to
    :func:`mask_text`, yet still personal data.

    >>> mask_cut_end("from bob@example.org and ann.lee@exa")
    ('from [REDACTED] and [REDACTED]', 2)
    """
    text, count = mask_text(text)
    if "@" in text or "%" in text or "//" in text:
        match = _CUT_END.search(_searchable(text))  # its positions are the text's
    else:
        match = None
    encoded = _encoded_cut_credentials(text) if "%" in text else None
    if encoded is not None and (match is None or encoded <= match.start()):
        # Percent-encoded credentials, user and all, from their "//" (an address
        # found in them would start later, at the password, and keep the user).
        return text[:encoded] + _URL_MASK, count + 1
    if match is not None:
        mask = _CREDENTIALS_MASK if match["credentials"] else (match["quotes"] or "") + REDACTED
        return text[: match.start()] + mask, count + 1
    if _foldable(text) and any(_CUT_END.search(_searchable(form)) for form in _folds(text)):
        # A full-width at sign (U+FF20) and the like, found only once folded: the
        # positions do not map back, so it all goes, as mask_text does.
        return REDACTED, count + 1
    return text, count


def _encoded_cut_credentials(text: str) -> int | None:
    """Where percent-encoded URL credentials that the end of ``text`` cuts short start
    (``?next=postgresql%3A%2F%2Fadmin%3As3cr``, at its ``%2F%2F``); None if none do."""
    start = None
    for match in _SLASHES.finditer(text):
        start = match.start()  # the last
    if start is None:
        return None
    return start if _CUT_CREDENTIALS_DECODED.match(percent_decoded(text[start:])) else None


def describe_key(key: str, policy: PiiPolicy | None = None) -> str:
    """``key`` as an error names it: its ``repr``, with an address or credentials in it
    masked (even percent-encoded: ``bob%40example.com``), and the value of a PII
    ``name=value`` in it (``password=...``), by ``policy`` or the default rule."""
    return repr(masked_key(key, policy))


def masked_key(key: str, policy: PiiPolicy | None = None) -> str:
    """A key as a message may name it: an address or credentials in it masked (even
    percent-encoded: bob%40example.com), and the value of a PII ``name=value`` in it.

    An equals sign may also be written full-width (U+FF1D) or in another form that
    NFKC or the tag characters read as one: ``password`` + U+FF1D + ``hunter2`` is
    refused as a key, and must not be repeated in the error that says so.
    """
    masked, count = mask_text(key)
    if not count and _holds_pii_text(key):
        masked = REDACTED
    if _holds_equals(masked) or _encoded(masked):  # "password%3Dhunter2" too
        return (policy or DEFAULT_POLICY).redact(masked)[0]
    return masked


def _holds_equals(text: str) -> bool:
    """Whether ``text`` holds "=", or a character its folded forms read as one (a
    full-width or small equals sign, the invisible tag copy of "=")."""
    return "=" in text or (_foldable(text) and any("=" in form for form in _folds(text)))


@final
@dataclass(frozen=True)
class PiiPolicy:
    """The PII rule plus a caller's own additions.

    ``blocked_keys`` are PII on top of the rule, wherever one ends a key as whole
    words (numbers left out, as for the rule's own words); ``allowed_keys`` pass even
    when the rule would block them, compared whole. Both after :func:`normalize_key`.
    The class cannot be subclassed: its caches of verdicts are its own, and a
    method overridden in a subclass would be bypassed by them.

    >>> policy = PiiPolicy(blocked_keys={"tenant"}, allowed_keys={"name"})
    >>> policy.is_pii_key("Tenant"), policy.is_pii_key("name"), policy.is_pii_key("userId")
    (True, False, True)
    """

    blocked_keys: frozenset[str] = frozenset()
    allowed_keys: frozenset[str] = frozenset()
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _plain_keys: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    plain_keys: AbstractSet[str] = field(init=False, repr=False, compare=False)
    """ASCII ``str`` keys already judged not PII: a live, bounded cache.

    A key is added the first time :meth:`is_pii_key` clears it. Membership
    is a yes from this policy for that key; absence says nothing. (The same set
    as ``_plain_keys``, read-only by its type: an attribute, not a property, as
    ``record_operation`` reads it on every call.)
    """
    _unchanged: set[tuple[str, str]] = field(
        default_factory=set, init=False, repr=False, compare=False
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError(
            "PiiPolicy cannot be subclassed; pass blocked_keys= and allowed_keys= instead"
        )

    def __init__(self, blocked_keys: Iterable[str] = (), allowed_keys: Iterable[str] = ()) -> None:
        object.__setattr__(self, "blocked_keys", frozenset(map(normalize_key, blocked_keys)))
        object.__setattr__(self, "allowed_keys", frozenset(map(normalize_key, allowed_keys)))
        object.__setattr__(self, "_verdicts", {})
        object.__setattr__(self, "_plain_keys", set())
        object.__setattr__(self, "plain_keys", self._plain_keys)
        object.__setattr__(self, "_unchanged", set())

    def is_pii_key(self, key: str) -> bool:
        """Whether ``key`` names personal data under this policy."""
        if type(key) is not str:
            key = text_of(key)
        verdict = self._verdicts.get(key)
        if verdict is None:
            forms = _spellings(key)
            if not forms.isdisjoint(self.allowed_keys):
                verdict = False  # allowed in any of its spellings
            else:
                verdict = any(
                    self._blocks(form) or _rule_says_pii(form) for form in forms
                ) or self._text_holds_pii(key)  # an address, credentials, password=...
            if len(self._verdicts) >= _CACHE_LIMIT:
                # A bounded cache: arbitrary keys must not grow memory.
                self._verdicts.clear()
                self._plain_keys.clear()
            self._verdicts[key] = verdict
            if not verdict and key.isascii():
                self._plain_keys.add(key)
        return verdict

    def _blocks(self, normalized: str) -> bool:
        """Whether a caller's blocked key is this key, or ends it as whole words
        (``mot_de_passe`` blocks ``nouveau_mot_de_passe`` and ``ancienMotDePasse``),
        numbered words judged without their numbers, as the rule's own words are."""
        blocked = self.blocked_keys
        if not blocked:
            return False
        words = normalized.split("_")
        bare = _unnumbered(words)
        # Each ending of whole words looked up once: the cost grows with the key's
        # words, not with how many keys are blocked.
        return any(
            "_".join(form[start:]) in blocked
            for form in (words, bare)
            for start in range(len(form))
        )

    def check_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Raise ValueError naming the first PII key (at any depth) or PII string value.

        The message names where the problem is, never the value.
        """
        # Error paths are built only for an error: a walk that just answers yes or
        # no comes first, and a flat dict of plain values under keys known to be
        # fine skips even that.
        if metadata.keys() <= self._plain_keys:
            for item in metadata.values():
                kind = type(item)
                if kind is str:
                    # _text_holds_pii's own first test, inline: most values pass it.
                    if ("@" in item or "=" in item or "%" in item or not item.isascii()) and (
                        self._text_holds_pii(item)
                    ):
                        break
                elif kind not in _PLAIN_SCALARS:
                    break
            else:
                return
        if self._holds_pii(metadata):
            self._check(metadata, "")
            # _check says where; should it ever find less than _holds_pii, still refused.
            raise ValueError("metadata contains PII")

    def check_row(self, row: RecordRow) -> None:
        """Raise ValueError saying which field of a row breaks the rule (never the value).

        The check every row gets before it is encoded and queued (and, for a span mapped in
        the writer process, before it is written): no PII key or value in its
        metadata, no address, credentials or PII ``name=value`` in its texts.
        """
        self.check_metadata(row[6])
        texts = (("operation_type", row[0]), ("operation_name", row[1]), ("error_message", row[5]))
        for field_name, text in texts:
            if (
                text is not None
                # _text_holds_pii's own first test, inline: most texts pass it.
                and (
                    type(text) is not str
                    or "@" in text
                    or "=" in text
                    or "%" in text
                    or not text.isascii()
                )
                and self._text_holds_pii(text)
            ):
                raise ValueError(f"{field_name} contains PII")

    def _text_holds_pii(self, text: str) -> bool:
        if type(text) is not str:
            text = text_of(text)
        if "@" not in text and "=" not in text and "%" not in text and text.isascii():
            return False  # no address, credentials or name=value without "@", "%40" or "="
        if ("text", text) in self._unchanged:
            return False
        if (_has_at_sign(text) and _search(text) is not None) or self._pii_parameter(
            text
        ) is not None:
            return True
        if _foldable(text):
            for folded in _folds(text):  # folded once, for both searches
                if (_has_at_sign(folded) and _search(folded) is not None) or self._pii_parameter(
                    folded
                ) is not None:
                    return True
        # Percent-encoded, as a URL quoted in a message or a form body holds it:
        # "redirect_uri=https%3A%2F%2Fadmin%3Ahunter2%40db", "next=%2Fr%3Ftoken%3Dt",
        # "q=reset+password=p" (a form's "+" is a space); the folded forms too (UTF-16
        # read as UTF-8 leaves a NUL after each character of "password%3Dp").
        if self._holds_encoded_pii(text):
            return True
        self._remember_unchanged("text", text)
        return False

    def _holds_encoded_pii(self, text: str) -> bool:
        """Whether ``text`` holds PII that shows only decoded (see _text_holds_pii)."""
        return _encoded(text) and (
            self._decoded_holds_pii(text)
            or (_foldable(text) and any(map(self._decoded_holds_pii, _folds(text))))
        )

    def _folded_parameter(self, text: str) -> str | None:
        """A PII ``name=value`` found only in the folded form of a non-ASCII text
        (a full-width equals sign, U+FF1D, a soft hyphen inside ``password``), or None."""
        if not _foldable(text):
            return None
        for folded in _folds(text):
            parameter = self._pii_parameter(folded)
            if parameter is not None:
                return parameter
        return None

    def _remember_unchanged(self, operation: str, text: str) -> None:
        """Remember that ``operation`` found no PII in ``text``: a bounded cache.

        Only short texts that hold no PII are kept. Span attributes repeat (a
        query such as ``page=2&per_page=50``), and the regular expressions
        behind a verdict cost a microsecond each.
        """
        if len(text) <= _REMEMBERED_TEXT_LENGTH:
            if len(self._unchanged) >= _CACHE_LIMIT:
                self._unchanged.clear()
            self._unchanged.add((operation, text))

    def _holds_pii(self, value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return self._text_holds_pii(value)
        if kind in _PLAIN_SCALARS:
            return False
        if isinstance(value, str):  # a str subclass: its text is what gets written
            return self._text_holds_pii(value)
        if isinstance(value, Mapping):
            return any(self.is_pii_key(key) or self._holds_pii(item) for key, item in value.items())
        if isinstance(value, list):
            return any(self._holds_pii(item) for item in value)
        return False

    def _check(self, value: Any, path: str) -> None:
        if isinstance(value, str):
            if type(value) is not str:
                value = text_of(value)
            found = _find_pii_text(value)
            if found is not None:
                what = "URL credentials" if found["credentials"] else "an e-mail address"
                raise ValueError(f"metadata {path} contains {what} (PII)")
            parameter = self._pii_parameter(value) or self._folded_parameter(value)
            if parameter is not None:
                word = self._pii_ending(parameter)
                named = f" {describe_key(word, self)}" if word is not None else ""
                raise ValueError(f"metadata {path} contains a value for the PII parameter{named}")
            if self._holds_encoded_pii(value):
                raise ValueError(
                    f"metadata {path} contains PII percent-encoded (an e-mail address, "
                    "URL credentials or a PII parameter)"
                )
        elif isinstance(value, Mapping):
            for key, item in value.items():
                name = describe_key(key, self)
                where = f"{path}.{name}" if path else name
                if self.is_pii_key(key):
                    raise ValueError(
                        f"metadata key {where} is PII and not allowed; "
                        "send an anonymised value under another key (e.g. a hash)"
                    )
                self._check(item, where)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check(item, f"{path}[{index}]")

    def _pii_ending(self, name: str) -> str | None:
        """What an error may name of a PII parameter: the shortest ending of its name,
        from one of its last words, that is PII (``token`` of ``access_token``), or None.

        Whatever comes before may be a value glued to the name
        (``jean.tremblay:hunter2,token``, ``514-555-0199-password``). At most the last
        eight words are tried: a long name costs no more than a short one.
        """
        name = percent_decoded(name)
        starts = [word.start() for word in _WORD.finditer(name, max(len(name) - 512, 0))]
        for start in reversed(starts[-8:]):
            ending = name[start:]
            if self.is_pii_key(ending):
                return ending
        return None

    def redact(self, text: str) -> tuple[str, int]:
        """``text`` with PII masked, and how many parts were.

        URL credentials and e-mail addresses as by :func:`mask_text`, and the
        value of every ``name=value`` whose name is a PII key (``?token=t``,
        ``;jsessionid=s``, ``password=p`` in a message) becomes ``REDACTED``.
        Free text (a name, an error message, a span attribute value) is masked
        rather than refused. Dropping PII keys from structured values is the
        span mapping's walk (``_span_rows._clean_attributes``), which also
        makes the values JSON-ready.
        """
        if self._pii_beside_nuls(text):
            return REDACTED, 1
        text, masked = mask_text(text)
        text, in_parameters = self.mask_parameters(text)
        masked += in_parameters
        if self._holds_encoded_pii(text):
            # PII percent-encoded (an encoded value beside no URL, a quoted URL): each
            # word that holds it decoded is read as a URL, or as a query when it is
            # name=value pairs (a form body), whose masking looks into each value.
            text, more = self._mask_encoded_words(text)
            masked += more
        return self._nothing_left(text, masked)

    def _mask_encoded_words(self, text: str) -> tuple[str, int]:
        masked = 0

        def mask(word: re.Match[str]) -> str:
            nonlocal masked
            if not self._holds_encoded_pii(word[0]):
                return word[0]
            pairs = "=" in word[0] and not any(mark in word[0] for mark in ("?", "#", "://"))
            text, count = self.mask_query(word[0]) if pairs else self.mask_url(word[0])
            masked += count
            return text

        return _NOT_SPACE.sub(mask, text), masked

    def mask_free_text(self, text: str) -> tuple[str, int]:
        """A free text (a name, an error message, an attribute value) with its PII masked.

        A text that is a URL or a request target, holding a ``=`` after a ``?``, ``#``
        or ``;``, is masked as one (:meth:`mask_url`); in other text each such URL is
        (so ``ValueError: no account; token=abc (retry in 5s)`` keeps its words and
        case), then the whole as :meth:`redact` masks it. Both paths, spans and
        ``record_operation``, mask their texts with this.
        """
        if "=" in text and ("?" in text or "#" in text or ";" in text):
            if _WHOLE_URL.match(text):
                return self.mask_url(text)  # it masks addresses, credentials, parameters too
            masked = 0

            def mask(url: re.Match[str]) -> str:
                nonlocal masked
                if "=" not in url[0]:
                    return url[0]
                text, count = self.mask_url(url[0])
                masked += count
                return text

            text, count = self.redact(_URL_IN_TEXT.sub(mask, text))
            return text, masked + count
        if "@" in text or "=" in text or "%" in text or not text.isascii():
            return self.redact(text)
        return text, 0

    def fit(self, masked: str, limit: int) -> str:
        """A masked text cut to ``limit`` characters, still passing :meth:`contains_pii`.

        A cut inside a masked parameter (``password=RED``) leaves what the check
        takes for a value: the cut then ends at that ``=``, and in the rare case
        that is not enough the whole text is masked.
        """
        if len(masked) <= limit:
            return masked
        cut = masked[:limit]
        if self._text_holds_pii(cut):
            equals = cut.rfind("=")
            cut = cut[: equals + 1] if equals >= 0 else ""
            if not cut or self._text_holds_pii(cut):
                return REDACTED
        return cut

    def _nothing_left(self, masked: str, count: int) -> tuple[str, int]:
        """``masked`` if :meth:`contains_pii` finds nothing in it, else all of it masked.

        Masking one part can make another look like PII (``//token=a/b;x@h``
        becomes ``//token=REDACTED;x@h``, credentials in form). The manager
        checks what the mapping masked and refuses a whole batch of spans over
        one such value, so whatever masking leaves must pass that check.
        """
        if self._text_holds_pii(masked):
            return REDACTED, max(count, 1)
        return masked, count

    def _pii_beside_nuls(self, text: str) -> bool:
        """Whether ``text`` holds NULs and PII: then it is masked whole.

        Its PII may show only without the NULs (UTF-16 read as UTF-8), whose positions
        do not map back; and bytes holding PII are masked whole, which OpenTelemetry
        before 1.45 hands over decoded into such a text.
        """
        return "\x00" in text and self._text_holds_pii(text)

    def contains_pii(self, text: str) -> bool:
        """Whether :meth:`redact` would mask anything in ``text``."""
        return self._text_holds_pii(text)

    def _pii_parameter(self, text: str) -> str | None:
        """The name of the first ``name=value`` in ``text`` whose name is PII, or None."""
        if "=" in text:
            for match in _PARAMETER.finditer(text):
                if self._is_pii_parameter(match):
                    return match["name"]
            if "/" in text or "," in text:
                for match in _SEGMENT_NAME.finditer(text):
                    if self._is_pii_segment(text, match):
                        return match["name"]
        return None

    def _is_pii_segment(self, text: str, match: re.Match[str]) -> bool:
        """Whether a ``/name=`` found by :data:`_SEGMENT_NAME` starts a PII value."""
        start = match.end()
        if start == len(text) or _VALUE_END.match(text, start):
            return False  # no value
        if text.startswith(_URL_MASK, start):
            after = start + len(_URL_MASK)
            if after == len(text) or _VALUE_END.match(text, after):
                return False  # masked already
        return self.is_pii_key(percent_decoded(match["name"]))

    def _mask_segments(self, text: str) -> tuple[str, int]:
        """The value of every PII ``/name=value`` set to ``REDACTED``, even one that an
        earlier segment's value runs over (``/a=1/password=p``); and how many were."""
        parts: list[str] = []
        last = masked = 0
        for match in _SEGMENT_NAME.finditer(text):
            start = match.end()
            if start < last or not self._is_pii_segment(text, match):
                continue  # inside a value masked already, or not PII
            end = _VALUE_END.search(text, start)
            parts += (text[last:start], _URL_MASK)
            last = len(text) if end is None else end.start()
            masked += 1
        if not masked:
            return text, 0
        parts.append(text[last:])
        return "".join(parts), masked

    def _is_pii_parameter(self, match: re.Match[str]) -> bool:
        value = match["value"]
        return (
            bool(value) and value != _URL_MASK and self.is_pii_key(percent_decoded(match["name"]))
        )

    def mask_parameters(self, text: str) -> tuple[str, int]:
        """Every ``name=value`` in ``text`` whose name is a PII key, valued ``REDACTED``."""
        if "=" not in text:
            return text, 0
        masked = 0

        def mask(match: re.Match[str]) -> str:
            nonlocal masked
            if not self._is_pii_parameter(match):
                return match[0]
            masked += 1
            return f"{match['name']}={_URL_MASK}"

        text = _PARAMETER.sub(mask, text)
        if "/" in text or "," in text:
            text, in_segments = self._mask_segments(text)
            masked += in_segments
        return text, masked

    def mask_query(self, query: str) -> tuple[str, int]:
        """Set the value of every PII query parameter to ``REDACTED``.

        A parameter is PII when its name, percent-decoded (``user%5Bemail%5D`` is
        ``user[email]``), is a PII key, or when its value, percent-decoded, holds
        an e-mail address or URL credentials. ``email=a@b.io&page=2`` becomes
        ``email=REDACTED&page=2``; the other parameters are kept byte for byte.
        Returns the query and the count masked.
        """
        if type(query) is str and self._plain_query(query):
            return query, 0
        return self._masked("query", query, self._mask_query)

    def _plain_query(self, query: str) -> bool:
        """Whether :meth:`mask_query` leaves ``query`` as it is, told cheaply: True only for
        a text of ``name=value`` pairs (:func:`_only_parameters`) whose names the policy
        has cleared before, as they are. Its structured pass then finds nothing (no value
        holds ``@`` or ``%``, no name is PII), and the search after it is skipped.

        A query seen once (a cursor, a search term) is never found remembered: for
        ``cursor=<16 hex digits>&limit=50`` the passes cost 24,800 instructions, this
        10,600 (callgrind).
        """
        if not _only_parameters(query):
            return False
        plain_keys = self._plain_keys
        for part in query.split("&"):
            name, equals, value = part.partition("=")
            # "+" in a name is decoded to a space before it is judged, and in a value
            # holding "=" it may start a pair ("q=a+password=p"): left to that pass.
            if equals and (
                name not in plain_keys or "+" in name or ("+" in value and "=" in value)
            ):
                return False
        return True

    def _mask_query(self, query: str) -> tuple[str, int]:
        masked_query, masked = self._mask_parameters(query, "&")
        if not masked and _only_parameters(query):
            return query, 0  # the structured pass saw all there is: see _only_parameters
        masked_query, more = self._mask_the_rest(masked_query)
        return masked_query, masked + more

    def mask_url(self, url: str) -> tuple[str, int]:
        """Mask credentials and PII parameters, path segments and fragments in a URL.

        ``https://bob:pw@h/p;jsessionid=1?email=a@b.io&page=2#access_token=t`` becomes
        ``https://REDACTED:REDACTED@h/p;jsessionid=REDACTED?email=REDACTED&page=2#access_token=REDACTED``:
        the query as by :meth:`mask_query`; a fragment holding ``=`` likewise
        (the OAuth implicit flow returns tokens there); path parameters
        (``;name=value``) likewise; a path segment, or a fragment without ``=``,
        that decodes to an e-mail address becomes ``REDACTED``. Works on full
        URLs and on targets such as ``/p?x=1``. Returns the URL and the count masked.
        """
        return self._masked("url", url, self._mask_url)

    def _masked(
        self, operation: str, text: str, mask: Callable[[str], tuple[str, int]]
    ) -> tuple[str, int]:
        """``mask(text)``, remembered when it changed nothing, and never leaving PII.

        ``mask`` must run the structured pass over every ``&``-separated pair of the
        text (``_mask_query`` and ``_mask_url`` do): for a text of such pairs only, the
        last check is then skipped, as :func:`_only_parameters` explains.
        """
        text = text_of(text)
        if (operation, text) in self._unchanged:
            return text, 0
        if self._pii_beside_nuls(text):
            return REDACTED, 1
        masked, count = mask(text)
        if not count and masked == text and _only_parameters(text):
            # Nothing for the last check to find (see _only_parameters): skip its search.
            self._remember_unchanged(operation, text)
            return text, 0
        result = self._nothing_left(masked, count)
        if not count and result[0] == text:  # unchanged by both: remembered
            self._remember_unchanged(operation, text)
        return result

    def _mask_url(self, url: str) -> tuple[str, int]:
        # Credentials first, on the whole text: urlsplit ends the authority at the first
        # "/", "?" or "#", which a password may hold (redis://u:pa#ss@h would leave
        # "u:pa" in the netloc and "ss@h" in the fragment).
        masked = 0
        if "@" in url:
            url, masked = _mask_matches(_CREDENTIALS_ONLY, url)
        try:
            parts = urlsplit(url)
        except ValueError:
            return REDACTED, 1
        netloc = parts.netloc
        if "@" in netloc and not netloc.startswith(_NETLOC_MASK):
            netloc = _NETLOC_MASK + netloc.rpartition("@")[2]
            masked += 1
        path, in_path = self._mask_path(parts.path)
        query, in_query = self._mask_parameters(parts.query, "&")
        fragment, in_fragment = self._mask_fragment(parts.fragment)
        masked += in_path + in_query + in_fragment
        if masked:
            url = urlunsplit((parts.scheme, netloc, path, query, fragment))
        url, more = self._mask_the_rest(url)
        return url, masked + more

    def _mask_the_rest(self, text: str) -> tuple[str, int]:
        """After the structured pass: once more over the whole, as the manager checks it.

        An address or credentials may span two parameters; parameters may be
        separated by ``;`` or white space (free text around a URL), nest in an
        unencoded URL (``next=https://x/cb?token=t``), or sit in a path segment
        (``/reset/token=t``). Whatever :meth:`contains_pii` would still find is masked.
        """
        text, masked = mask_text(text)
        if "=" in text and self._pii_parameter(text) is not None:
            text, more = self.mask_parameters(text)
            masked += more
        return text, masked

    def _mask_parameters(self, text: str, separator: str) -> tuple[str, int]:
        """``name=value`` pairs joined by ``separator``, PII values set to ``REDACTED``.

        A name that itself decodes to PII text goes too; a part without ``=``
        that decodes to PII text is replaced whole.
        """
        if not text:
            return text, 0
        parts = text.split(separator)
        masked = 0
        for index, part in enumerate(parts):
            name, equals, value = part.partition("=")
            if not equals:
                if self._part_holds_pii(part):
                    parts[index] = _URL_MASK
                    masked += 1
                continue
            key = percent_decoded(name) if "%" in name or "+" in name else name
            if self.is_pii_key(key):
                if contains_pii_text(key):
                    name = _URL_MASK
            elif not (
                ("@" in value or _encoded(value) or not value.isascii())
                and self._decoded_holds_pii(value)
            ):
                continue  # the common case, kept cheap: "+" alone decodes to no PII
            parts[index] = f"{name}={_URL_MASK}"
            masked += 1
        return (separator.join(parts), masked) if masked else (text, 0)

    def _decoded_holds_pii(self, value: str) -> bool:
        """Whether a parameter's value, percent-decoded, holds PII: an address,
        credentials, or a PII ``name=value`` of a URL nested in it
        (``next=%2Freset%3Ftoken%3Ds3cr3t``)."""
        decoded = percent_decoded(value)
        return (
            contains_pii_text(decoded)
            or ("=" in decoded and self._pii_parameter(decoded) is not None)
            or self._folded_parameter(decoded) is not None  # a full-width "=" encoded
        )

    def _mask_path(self, path: str) -> tuple[str, int]:
        if ";" not in path and "%" not in path and "@" not in path:
            return path, 0  # no path parameters, nothing encoded, no address
        segments = path.split("/")
        masked = 0
        for index, segment in enumerate(segments):
            name, semicolon, parameters = segment.partition(";")
            if self._part_holds_pii(name):
                name = _URL_MASK
                masked += 1
            if semicolon:
                parameters, in_parameters = self._mask_parameters(parameters, ";")
                masked += in_parameters
            segments[index] = name + semicolon + parameters
        return ("/".join(segments), masked) if masked else (path, 0)

    def _mask_fragment(self, fragment: str) -> tuple[str, int]:
        if "=" in fragment:
            return self._mask_parameters(fragment, "&")
        if self._part_holds_pii(fragment):
            return _URL_MASK, 1
        return fragment, 0

    def _part_holds_pii(self, part: str) -> bool:
        """Whether a part of a URL with no ``=`` of its own (a path segment, a query
        part, a fragment), percent-decoded, holds an e-mail address, credentials, or
        a PII ``name=value`` (``password%3Dhunter2``). A segment with a ``=`` of its
        own (``/name=Alice%20Smith``) has its value masked by the pass after."""
        if _encoded(part) and "=" not in part:
            return self._decoded_holds_pii(part)
        return _holds_pii_text(part)


# A text that is a URL or a request target and nothing else: a scheme and "//", or a
# leading "/", and no white space after.
_WHOLE_URL = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*://|/)\S*\Z")
# A URL among words: a scheme and "//" where a word starts, or a "/" after white space, a
# quote, a bracket, "=" or ","; up to white space, a quote or a closing bracket. With "=".
# Matched to its end whether or not it holds a "=" (the masking skips one without): a
# start inside a run that failed would scan the same run again, quadratic in a text of
# ",/a,/a,/a...". A later start in the run can find a "=" only where the first does.
_URL_IN_TEXT = re.compile(
    r"(?:(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://|(?<![^\s'\"`(\[<{=,])/)"
    r"[^\s'\"`<>)\]}]*"
)


_NOT_SPACE = re.compile(r"\S+")


def _encoded(text: str) -> bool:
    """Whether decoding ``text`` as a URL's part may change it: a ``%``, or a ``+`` (a
    space in a form) beside a ``=``."""
    return "%" in text or ("+" in text and "=" in text)


def percent_decoded(text: str) -> str:
    """``text`` percent-decoded (``+`` as a space), through up to three layers."""
    for _ in range(_MAX_DECODINGS):
        if "%" not in text and "+" not in text:
            break
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def _only_parameters(text: str) -> bool:
    """Whether ``text`` can hold no PII but a ``name=value`` pair split on ``&``.

    ASCII without ``@`` or ``%`` (no address, plain or encoded), ``/`` (no credentials,
    path segment or nested URL), ``;``, ``?``, ``#``, ``,`` or white space (no other way
    to start a ``name=value``), nor NUL (which may hide any of those: see
    :data:`_FOLDED_AWAY`): every pair :data:`_PARAMETER` could find starts the text
    or follows ``&``, and :meth:`PiiPolicy.mask_query`'s structured pass judged each
    one. A query such as ``page=2&cursor=8f3a9c`` then needs no search after that pass:
    each unique one costs a third as much (``tests/test_pii.py`` holds the shortcut to
    the full passes).
    """
    return text.isascii() and _NOT_ONLY_PARAMETERS.search(text) is None


def _holds_pii_text(text: str) -> bool:
    """Whether a URL part, percent-decoded, holds an e-mail address or credentials."""
    return contains_pii_text(percent_decoded(text))


DEFAULT_POLICY = PiiPolicy()
"""The rule with no additions."""


# A key as repr() quotes it in a message (``'a'``, ``"it's"``, with escapes inside).
# Possessive, and ending at the end of the text if it must: an unclosed quote is one
# literal (masked), not a new attempt from every later quote (quadratic).
_QUOTED = re.compile(
    "'"
    + _atomic(r"(?:[^'\\]|\\.)*")
    + r"(?:'|\Z)|"
    + '"'
    + _atomic(r'(?:[^"\\]|\\.)*')
    + r'(?:"|\Z)'
)


def mask_quoted_keys(message: str, policy: PiiPolicy | None = None) -> str:
    """``message`` with the PII in every quoted key masked.

    repr() writes an invisible character as an escape (``'bob@exam\\xadple.com'``),
    which hides the address from :func:`mask_text`: each quoted key with an escape is
    read back and judged as the text it is. One that cannot be read back is masked.
    A quoted ``name=value`` (``'password=hunter2'``) gets its PII values masked too.
    """
    if "\\" not in message and not _holds_equals(message) and not _encoded(message):
        return message  # nothing escaped, no name=value: mask_text sees every key as it is

    def mask(match: re.Match[str]) -> str:
        literal = match[0]
        if "\\" not in literal and not _holds_equals(literal) and not _encoded(literal):
            return literal
        try:
            text = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            return repr(REDACTED)
        return describe_key(text, policy) if isinstance(text, str) else repr(REDACTED)

    return _QUOTED.sub(mask, message)


def safe_validation_message(
    exc: ValidationError,
    prefix: str = "invalid operation record: ",
    max_errors: int | None = None,
    policy: PiiPolicy | None = None,
) -> str:
    """A one-line account of a pydantic error that holds no input value.

    Built from locations and messages only, since pydantic's own ``str()`` echoes
    the input: ``prefix``, then ``where: what`` for each error, ``; ``-joined. A
    location names keys, and a key can itself be an e-mail address or a
    ``name=value`` pair, so every location part and message is masked by
    :func:`mask_text`, and the value of a PII pair in it too. The metadata
    validator's messages name their own place (``metadata 'a'.'b': ...``), so
    the location part ``metadata`` is not repeated before them. With
    ``max_errors``, the rest are counted (``and 2 more errors``). ``policy`` (the
    default rule if None) masks PII parameters in quoted keys (``'tenant=...'``).
    The manager, the span exporter and the command line all word errors this way.
    """
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = errors if max_errors is None else errors[:max_errors]
    parts = []
    for error in shown:
        text = error["msg"].removeprefix("Value error, ")
        message = mask_text(mask_quoted_keys(text, policy))[0]
        # A location part names a key, which may be an address or a name=value pair.
        where = [masked_key(str(part), policy) for part in error["loc"]]
        if where and where[-1] == "metadata" and message.startswith("metadata"):
            where.pop()
        parts.append(f"{'.'.join(where)}: {message}" if where else message)
    if len(shown) < len(errors):
        parts.append(f"and {len(errors) - len(shown)} more errors")
    # Once more over the whole: parts joined with "." could form an address. A key read
    # from a file (an extra key in a batch) may hold a newline or an escape sequence:
    # shown escaped, so that the line is one line and no terminal acts on it, then
    # masked again as shown.
    masked = mask_text(prefix + "; ".join(parts))[0]
    return mask_text(escape_controls(masked))[0]


# Runs of characters other than printable ASCII, the only ones that may need escaping.
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]+")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(character: str) -> str:
    """One character as repr() writes one it does not print: \\n, \\x1b, \\u200b, \\U000e0041."""
    named = _NAMED_ESCAPES.get(character)
    if named is not None:
        return named
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escape_run(match: re.Match[str]) -> str:
    run = match[0]
    if run.isprintable() and _INVISIBLE.search(run) is None:
        return run  # letters, marks, symbols, emoji: shown as they are
    return "".join(
        character
        if character.isprintable() and _INVISIBLE.match(character) is None
        else _escape(character)
        for character in run
    )


def escape_controls(text: str) -> str:
    r"""``text`` with each character that shows nothing, or not itself, written as an
    escape, as ``repr`` writes one (``\n``, ``\x1b``, ``\u202e``, ``\U000e0041``).

    Those are every character ``str.isprintable()`` refuses (categories Cc, Cf, Cs,
    Co, Cn, Zl, Zp, and the spaces of Zs other than U+0020: control characters, the
    bidirectional controls, zero-width spaces and joiners, the soft hyphen, tag
    characters, surrogates, private use, unassigned code points, the no-break and other
    spaces), and the invisible characters it takes for printable (variation selectors,
    the Hangul fillers, the combining grapheme joiner, the Braille blank): the
    characters the PII rule reads as invisible. A newline would forge a line, an escape
    sequence rewrite the terminal it is printed on, a bidirectional override reorder
    what it shows, an invisible character make two names print alike or hide a text
    (tag characters are an invisible copy of ASCII). Letters, marks, symbols and emoji
    of every script are kept; an emoji sequence's joiners and selectors are escaped.
    A backslash is kept as it is.

    >>> escape_controls("GET /\x1b[2J\nok\u200b café")
    'GET /\\x1b[2J\\nok\\u200b café'
    """
    if text.isascii() and text.isprintable():
        return text
    return _NOT_PRINTABLE_ASCII.sub(_escape_run, text)
