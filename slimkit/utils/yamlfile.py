"""YAML files that remember where each key came from, so errors name the file, line and key.

:func:`load_yaml` parses with ``yaml.SafeLoader`` (no object construction from tags) and returns
a :class:`YamlDocument`: the plain data plus the line of every mapping key and sequence item,
addressed by its path (``('config_list', 0, 'sparsity')``). Duplicate keys are errors.

Hostile files are refused before they cost much: at most :data:`MAX_BYTES` of text, nesting at most
:data:`MAX_DEPTH` levels, and at most :data:`MAX_VALUES` values once aliases are expanded (an alias ``*a``
repeats its anchor's whole content, so a few lines of nested aliases can stand for billions of values).

Example:

>>> import os, tempfile
>>> from slimkit.utils.yamlfile import load_yaml
>>> path = os.path.join(tempfile.mkdtemp(), 'cfg.yaml')
>>> _ = open(path, 'w').write("algorithm: LevelPruner\\nconfig_list:\\n  - sparsity: 0.5\\n    op_types: [Linear]\\n")
>>> doc = load_yaml(path)
>>> doc.data['config_list'][0]['sparsity'], doc.line(('config_list', 0, 'sparsity'))
(0.5, 3)
>>> doc.where(('config_list', 0, 'op_types')).endswith('cfg.yaml:4')
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from slimkit.errors import ConfigError

Path = tuple[Any, ...]


@dataclass
class YamlDocument:
    """Parsed YAML data and the 1-based line of every key / item path in it."""

    path: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int:
        """Line of ``path``, or of its nearest ancestor that has one (1 for the document)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def where(self, path: Path = ()) -> str:
        """``'file:line'`` of ``path``."""
        return f"{self.path}:{self.line(path)}"

    def error(self, path: Path, message: str) -> ConfigError:
        """A :class:`ConfigError` reading ``file:line: key 'k' (at a[0].k): message`` for ``path``."""
        return ConfigError(f"{self.where(path)}: {describe(path)}: {message}")


def describe(path: Path) -> str:
    """``key 'sparsity' (at config_list[0].sparsity)`` for a key path; ``config_list[0]`` for an item.

    Example:

    >>> describe(('config_list', 2, 'sparsity')), describe(('config_list', 1)), describe(())
    ("key 'sparsity' (at config_list[2].sparsity)", 'config_list[1]', 'the document')
    """
    if not path:
        return "the document"
    dotted = ""
    for part in path:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
    if isinstance(path[-1], int):
        return dotted
    return f"key {path[-1]!r}" + (f" (at {dotted})" if len(path) > 1 else "")


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{file}:{line}: key {key!r} appears twice in the same mapping (first on line "
                                  f"{seen[key]}). Expected each key once.")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _walk(item, path + (index,), lines, file)


MAX_BYTES = 4 * 2**20
"""Largest YAML file read (a config file is a few kilobytes)."""
MAX_DEPTH = 64
"""Deepest nesting of lists and mappings."""
MAX_VALUES = 250_000
"""Most values (scalars, lists, mappings) in the document with every alias expanded."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses deep nesting while composing, and names the line of a value it cannot build."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # the scanner looks ahead through nested [ and {: refuse deep nesting before it does
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as error:  # e.g. the date 2024-13-45
            raise yaml.constructor.ConstructorError(None, None, f"{error} ({node.value!r})", node.start_mark) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node, path: str) -> None:
    """Refuse a document that, with every alias expanded, holds more than :data:`MAX_VALUES` values or nests
    deeper than :data:`MAX_DEPTH`, or whose alias refers to its own anchor. Each distinct node is visited once
    (sizes of shared anchors are remembered), so this costs the size of the text, not of the expansion."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        where = f"{path}:{node.start_mark.line + 1}"
        if children_done:
            children = [sizes[id(child)] for child in _children(node)]
            values, depth = 1 + sum(v for v, _ in children), 1 + max((d for _, d in children), default=0)
            if values > MAX_VALUES:
                raise ConfigError(f"{where}: this value expands to more than {MAX_VALUES:,} values through aliases "
                                  f"(*name repeats the whole of &name). Expected a config file of ordinary size.")
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: through aliases, this value nests deeper than {MAX_DEPTH} levels. "
                                  f"Expected a config file of ordinary depth.")
            sizes[key] = (values, depth)
            open_nodes.discard(key)
        elif key in open_nodes:
            raise ConfigError(f"{where}: an alias refers to the value it is inside of (a recursive structure). "
                              f"Expected aliases to earlier, complete values.")
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"Expected a readable YAML file. Received: path={path!r} ({error.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: the file is larger than {MAX_BYTES // 2**20} MiB. Expected a YAML config file.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}:{line}: the file is not UTF-8 text (byte {error.start} is "
                          f"{raw[error.start]:#04x}). Expected a YAML file saved as UTF-8.") from None


def load_yaml(path: str | os.PathLike) -> YamlDocument:
    """Read ``path`` safely and record the line of every key.

    Raises:
        ConfigError: the file is missing, too large, not UTF-8, not valid YAML (message gives ``file:line``),
            nested too deep, expands to too many values through aliases, or repeats a key.
    """
    path = os.fspath(path)
    text = _read_text(path)
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as error:  # a control character: YAML allows printable text only
        raise ConfigError(f"{path}:{text.count(chr(10), 0, error.position) + 1}: invalid YAML: character "
                          f"{error.character:#06x} is not allowed (only printable text is)") from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{path}:{line}: invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {(): node.start_mark.line + 1} if node is not None else {}
    if node is not None:
        _walk(node, (), lines, path)
    return YamlDocument(path, data, lines)
