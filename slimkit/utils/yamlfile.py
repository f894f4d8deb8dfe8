"""YAML files that remember where each key came from, so errors name the file, line and key.

:func:`load_yaml` parses with ``yaml.SafeLoader`` (no object construction from tags) and returns
a :class:`YamlDocument`: the plain data plus the line of every mapping key and sequence item,
addressed by its path (``('config_list', 0, 'sparsity')``). Duplicate keys are errors.

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


def load_yaml(path: str | os.PathLike) -> YamlDocument:
    """Read ``path`` safely and record the line of every key.

    Raises:
        ConfigError: the file is missing, is not valid YAML (message gives ``file:line``), or repeats a key.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"Expected a readable YAML file. Received: path={path!r} ({error.strerror})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
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
