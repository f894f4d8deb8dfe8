"""A bounds-checked walk of a flatbuffer, so that a corrupt file is refused before any reader touches it.

The Python ``flatbuffers`` package reads lazily and checks nothing: a truncated or damaged file either
raises ``struct.error`` / ``IndexError`` deep inside a reader or, worse, reads garbage that looks valid.
:func:`check_flatbuffer` does what the C++ ``flatbuffers::Verifier`` does, for a schema described with the
small types below: every table's vtable and fields, every vector, string and nested table lie inside the
buffer, offsets are aligned, strings are UTF-8 and end with their zero byte, and the walk is bounded (depth
and number of objects visited), so a hostile file cannot make it run long.

Example:

>>> import flatbuffers
>>> point = Table("Point", {"x": I32, "label": STRING})
>>> builder = flatbuffers.Builder(0)
>>> label = builder.CreateString("origin")
>>> builder.StartObject(2); builder.PrependInt32Slot(0, 7, 0); builder.PrependUOffsetTRelativeSlot(1, label, 0)
>>> _ = builder.Finish(builder.EndObject())
>>> data = bytes(builder.Output())
>>> check_flatbuffer(data, point)
>>> check_flatbuffer(data[:-3], point)
Traceback (most recent call last):
...
slimkit.utils.flatbuffer_check.FlatbufferError: Point.label: string of 6 bytes at byte 24 runs past the end (33 bytes)
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

_U16, _U32, _I32 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<i")


class FlatbufferError(ValueError):
    """The buffer does not hold a well-formed flatbuffer of the schema; the message says where and what."""


@dataclass(frozen=True)
class Scalar:
    """A fixed-size field (``size`` bytes), stored inline in its table or vector."""

    size: int


@dataclass(frozen=True)
class String:
    """A length-prefixed, zero-terminated byte string."""


@dataclass(frozen=True)
class Vector:
    """A length-prefixed vector of ``element`` (a :class:`Scalar`, :class:`String` or :class:`Table`)."""

    element: Scalar | String | Table


@dataclass(frozen=True)
class UnionValue:
    """The value of a union field; ``type_field`` names the field holding its type (0 = none).

    The member tables are checked as tables (vtable and object inside the buffer), not field by field.
    """

    type_field: str


class Table:
    """A table type: ``fields`` maps each field name to its type, in the schema's order (one slot each;
    a union is two fields, ``<name>_type`` then ``<name>``). ``None`` marks a deprecated slot."""

    def __init__(self, name: str, fields: Mapping[str, Field | None]):
        self.name = name
        self.fields = tuple((slot, field_name, kind) for slot, (field_name, kind) in enumerate(fields.items())
                            if kind is not None)

    def __repr__(self) -> str:
        return f"Table({self.name!r})"


Field = Scalar | String | Vector | Table | UnionValue

U8 = I8 = BOOL = Scalar(1)
U16 = I16 = Scalar(2)
U32 = I32 = F32 = Scalar(4)
U64 = I64 = F64 = Scalar(8)
STRING = String()
OPAQUE = Table("table", {})
_MAX_DEPTH = 64


class _Walker:
    def __init__(self, data: bytes, root: Table):
        self.data = data
        self.size = len(data)
        self.budget = len(data) // 2 + 1024  # a well-formed buffer holds far fewer objects than that
        self.path: list[str] = [root.name]

    def fail(self, message: str) -> FlatbufferError:
        return FlatbufferError(f"{''.join(self.path)}: {message}")

    def need(self, start: int, length: int, what: str) -> None:
        if start < 0 or start + length > self.size:
            raise self.fail(f"{what} at byte {start} runs past the end ({self.size} bytes)")

    def aligned(self, position: int, alignment: int, what: str) -> None:
        if position % alignment:
            raise self.fail(f"{what} at byte {position} is not aligned to {alignment} bytes")

    def follow(self, position: int, what: str) -> int:
        """The target of the unsigned offset stored at ``position``."""
        self.need(position, 4, f"offset to {what}")
        self.aligned(position, 4, f"offset to {what}")
        return position + _U32.unpack_from(self.data, position)[0]

    def visit(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise self.fail("more objects than a buffer of this size can hold (offsets shared in a loop?)")
        if len(self.path) > 2 * _MAX_DEPTH:  # a field name and an index per level
            raise self.fail(f"nested deeper than {_MAX_DEPTH} levels")

    def table(self, position: int, table: Table) -> None:
        self.visit()
        self.need(position, 4, f"table {table.name}")
        self.aligned(position, 4, f"table {table.name}")
        vtable = position - _I32.unpack_from(self.data, position)[0]
        self.need(vtable, 4, f"vtable of {table.name}")
        self.aligned(vtable, 2, f"vtable of {table.name}")
        vtable_size, object_size = _U16.unpack_from(self.data, vtable)[0], _U16.unpack_from(self.data, vtable + 2)[0]
        if vtable_size < 4 or vtable_size % 2:
            raise self.fail(f"vtable of {table.name} at byte {vtable} has an invalid size {vtable_size}")
        self.need(vtable, vtable_size, f"vtable of {table.name}")
        if object_size < 4:
            raise self.fail(f"table {table.name} at byte {position} has an invalid size {object_size}")
        self.need(position, object_size, f"table {table.name} of {object_size} bytes")
        slots = (vtable_size - 4) // 2
        offsets = [_U16.unpack_from(self.data, vtable + 4 + 2 * slot)[0] for slot in range(slots)]
        for offset in offsets:
            if offset and offset + 1 > object_size:
                raise self.fail(f"a field of {table.name} lies outside its table")
        present = {}
        for slot, name, kind in table.fields:
            offset = offsets[slot] if slot < slots else 0
            if not offset:
                continue
            present[name] = position + offset
            width = kind.size if isinstance(kind, Scalar) else 4
            if offset + width > object_size:
                raise self.fail(f"field {table.name}.{name} lies outside its table")
            if isinstance(kind, Scalar):
                continue
            self.path.append(f".{name}")
            if isinstance(kind, UnionValue):
                member = present.get(kind.type_field)
                if member is not None and self.data[member]:
                    self.table(self.follow(position + offset, "union member"), OPAQUE)
            else:
                self.value(self.follow(position + offset, name), kind)
            self.path.pop()

    def vector(self, position: int, element_size: int, what: str) -> int:
        self.need(position, 4, what)
        self.aligned(position, 4, what)
        count = _U32.unpack_from(self.data, position)[0]
        self.need(position + 4, count * element_size, f"{what} of {count} elements")
        return count

    def value(self, position: int, kind: Field) -> None:
        if isinstance(kind, Table):
            self.table(position, kind)
        elif isinstance(kind, String):
            self.visit()
            self.need(position, 4, "string")
            length = _U32.unpack_from(self.data, position)[0]
            self.need(position, 4 + length + 1, f"string of {length} bytes")
            if self.data[position + 4 + length] != 0:
                raise self.fail(f"string at byte {position} lacks its terminating zero byte")
            try:
                self.data[position + 4:position + 4 + length].decode("utf-8")
            except UnicodeDecodeError as error:
                raise self.fail(f"string at byte {position} is not UTF-8 ({error.reason} at byte "
                                f"{position + 4 + error.start})") from None
        elif isinstance(kind, Vector):
            self.visit()
            element = kind.element
            if isinstance(element, Scalar):
                self.vector(position, element.size, "vector")
                return
            count = self.vector(position, 4, "vector")
            for index in range(count):
                self.path.append(f"[{index}]")
                self.value(self.follow(position + 4 + 4 * index, "element"), element)
                self.path.pop()


def check_flatbuffer(data: bytes, root: Table, identifier: bytes | None = None) -> None:
    """Walk ``data`` as a flatbuffer whose root is a ``root`` table; raise :class:`FlatbufferError` if any
    table, vector or string of the schema lies (partly) outside it, or the ``identifier`` (4 bytes after the
    root offset) differs."""
    walker = _Walker(bytes(data), root)
    if identifier is not None and data[4:8] != identifier:
        raise FlatbufferError(f"file identifier {bytes(data[4:8])!r}, expected {identifier!r}")
    walker.table(walker.follow(0, "the root table"), root)
