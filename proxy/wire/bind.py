"""Reading a Bind message: which statement, and its parameter values as SQL literals.

Used only for prepared statements that call models with bind parameters: the proxy must know
the calls' arguments before the statement runs, so it substitutes the values into the
statement text to evaluate them. Text-format values go as they are; binary values only for
types whose binary form is plain (text and names, integers, floats, booleans).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

TEXT_OIDS = frozenset({25, 1043, 19, 1042})  # text, varchar, name, bpchar: binary = UTF-8
_BINARY_NUMBERS = {21: "!h", 23: "!i", 20: "!q", 700: "!f", 701: "!d"}
_BOOL = 16


class UnsupportedParameter(Exception):
    """A value the proxy cannot turn into a literal (binary form of another type)."""


@dataclass(frozen=True)
class Bind:
    portal: bytes
    statement: bytes
    formats: tuple[int, ...]
    values: tuple[bytes | None, ...]

    def format_of(self, index: int) -> int:
        if not self.formats:
            return 0
        return self.formats[0] if len(self.formats) == 1 else self.formats[index]


def parse_statement_name(body: bytes) -> bytes:
    """The name a Parse body gives its statement (b"": the unnamed one)."""
    return body[: body.index(b"\0")]


def statement_name(body: bytes) -> bytes:
    """The prepared statement a Bind body refers to (cheap: two C strings)."""
    first = body.find(b"\0")
    second = body.find(b"\0", first + 1)
    return body[first + 1 : second]


def parse_bind(body: bytes) -> Bind:
    portal_end = body.index(b"\0")
    statement_end = body.index(b"\0", portal_end + 1)
    pos = statement_end + 1
    (nformats,) = struct.unpack_from("!H", body, pos)
    formats = struct.unpack_from(f"!{nformats}H", body, pos + 2)
    pos += 2 + 2 * nformats
    (nvalues,) = struct.unpack_from("!H", body, pos)
    pos += 2
    values: list[bytes | None] = []
    for _ in range(nvalues):
        (length,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + length])
            pos += length
    return Bind(body[:portal_end], body[portal_end + 1 : statement_end], tuple(formats), tuple(values))


def parameter_types(parse_body: bytes) -> tuple[int, ...]:
    """The parameter type OIDs a Parse declares (0: let the server infer)."""
    name_end = parse_body.index(b"\0")
    query_end = parse_body.index(b"\0", name_end + 1)
    pos = query_end + 1
    (count,) = struct.unpack_from("!H", parse_body, pos)
    return struct.unpack_from(f"!{count}I", parse_body, pos + 2)


def literal(value: bytes | None, fmt: int, oid: int, quote: Callable[[str], str]) -> str:
    """An SQL literal (untyped, so the statement's context types it) for one parameter."""
    if value is None:
        return "NULL"
    if fmt == 0 or oid in TEXT_OIDS or oid == 0:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsupportedParameter("a parameter is not UTF-8 text") from exc
        if fmt != 0 and oid == 0 and "\0" in text:
            raise UnsupportedParameter("a binary parameter of undeclared type")
        return quote(text)
    if oid in _BINARY_NUMBERS:
        (number,) = struct.unpack(_BINARY_NUMBERS[oid], value)
        return repr(number)
    if oid == _BOOL:
        return "true" if value != b"\0" else "false"
    raise UnsupportedParameter(f"a binary parameter of type oid {oid}")
