"""Load a YAML file into a typed model, reporting every problem with its file:line:column.

PyYAML alone is too forgiving for a configuration file: duplicate keys silently win last, and YAML 1.1
turns ``yes``/``on`` into booleans and ``0755`` into a number. This loader composes the document into
nodes (which keep their positions), rejects duplicate keys, substitutes ``${NAME}`` from the
environment, validates with pydantic and maps each error's path back to the node it came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from vmtest.errors import ConfigError, ConfigProblem

__all__ = ["load_model", "load_yaml_file"]

ModelT = TypeVar("ModelT", bound=BaseModel)

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_Mark = tuple[int, int]  # 1-based line and column
_PathKey = tuple[str | int, ...]
_MAX_VALUES = 100_000  # aliases can make a small file expand without limit ("billion laughs")


class _Document:
    """A YAML document as plain data plus the position of every value and key in it."""

    def __init__(
        self,
        data: Any,
        marks: dict[_PathKey, _Mark],
        key_marks: dict[_PathKey, _Mark],
        from_environment: set[_PathKey],
        problems: list[ConfigProblem],
    ) -> None:
        self.data = data
        self.marks = marks
        self.key_marks = key_marks
        self.from_environment = from_environment
        self.problems = problems

    def mark_for(self, path: _PathKey) -> _Mark | None:
        """Position of the deepest node on ``path`` that exists in the document."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:end]))
            if mark is not None:
                return mark
        return None


def _mark(node: yaml.Node) -> _Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns composed YAML nodes into plain data, collecting problems instead of stopping at the first."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.marks: dict[_PathKey, _Mark] = {}
        self.key_marks: dict[_PathKey, _Mark] = {}
        self.problems: list[ConfigProblem] = []
        self.from_environment: set[_PathKey] = set()
        self._constructor = yaml.SafeLoader("")
        self._values = 0

    def problem(self, node: yaml.Node, path: _PathKey, message: str) -> None:
        line, column = _mark(node)
        self.problems.append(ConfigProblem(self.source, line, column, _dotted(path), message))

    def build(self, node: yaml.Node, path: _PathKey) -> Any:
        self._values += 1
        if self._values > _MAX_VALUES:
            line, column = _mark(node)
            message = f"the document expands to more than {_MAX_VALUES} values (aliases repeating aliases?)"
            raise ConfigError([ConfigProblem(self.source, line, column, "", message)])
        self.marks[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: _PathKey) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, _Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, path, "a key must be a plain string")
                continue
            key = str(key_node.value)
            if key in first_seen:
                line, column = first_seen[key]
                self.problem(
                    key_node, (*path, key), f"duplicate key (first defined at line {line}, column {column})"
                )
                continue
            first_seen[key] = _mark(key_node)
            self.key_marks[path + (key,)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result

    def _scalar(self, node: yaml.ScalarNode, path: _PathKey) -> Any:
        if node.tag == "tag:yaml.org,2002:str" or node.style in ("'", '"'):
            return self._substitute(node, path)
        if node.tag == "tag:yaml.org,2002:bool" and node.value.lower() not in ("true", "false"):
            # YAML 1.1 reads yes/no/on/off as booleans; in a config file that is a trap, so keep the text.
            return node.value
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as error:
            self.problem(node, path, f"cannot read this value: {error}")
            return node.value

    def _substitute(self, node: yaml.ScalarNode, path: _PathKey) -> str:
        if _ENV_REFERENCE.search(str(node.value)):
            self.from_environment.add(path)

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            value = self.environ.get(name)
            if value is None:
                self.problem(node, path, f"environment variable {name} is not set")
                return ""
            return value

        return _ENV_REFERENCE.sub(replace, str(node.value))


def _dotted(path: _PathKey) -> str:
    return ".".join(str(part) for part in path)


def load_yaml_file(path: Path, environ: Mapping[str, str] | None = None) -> tuple[Any, _Document]:
    """Read ``path`` into plain data with positions.

    Syntax errors raise :class:`ConfigError`; problems found while reading values (duplicate keys, unset
    environment variables) are kept in the document so they can be reported with the validation errors.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, None, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([ConfigProblem(source, None, None, "", f"cannot read: {error}")]) from None
    return load_yaml_text(text, source, environ)


def load_yaml_text(text: str, source: str, environ: Mapping[str, str] | None = None) -> tuple[Any, _Document]:
    """Parse YAML ``text`` (named ``source`` in messages) into plain data with positions."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        message = str(error.problem or error.context or "invalid YAML")
        raise ConfigError([ConfigProblem(source, line, column, "", f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as error:
        raise ConfigError([ConfigProblem(source, None, None, "", f"invalid YAML: {error}")]) from None
    except RecursionError:
        message = "invalid YAML: nested too deeply"
        raise ConfigError([ConfigProblem(source, None, None, "", message)]) from None
    builder = _Builder(source, os.environ if environ is None else environ)
    try:
        data = {} if node is None else builder.build(node, ())
    except RecursionError:
        message = "nested too deeply, or an alias refers to a node that contains it"
        raise ConfigError([ConfigProblem(source, None, None, "", message)]) from None
    return data, _Document(data, builder.marks, builder.key_marks, builder.from_environment, builder.problems)


def load_model(model: type[ModelT], path: Path, environ: Mapping[str, str] | None = None) -> ModelT:
    """Load and validate ``path`` as ``model``; every problem is reported together in one ConfigError.

    Relative paths in the file are resolved against the file's own directory.
    """
    data, document = load_yaml_file(path, environ)
    return validate(model, data, document, str(path), base_dir=path.resolve().parent)


def validate(model: type[ModelT], data: Any, document: _Document, source: str, *, base_dir: Path) -> ModelT:
    """Validate plain data against ``model``, locating each pydantic error in the YAML document."""
    problems = list(document.problems)
    if not isinstance(data, dict):
        line_column = document.mark_for(())
        line, column = line_column if line_column else (None, None)
        problems.append(ConfigProblem(source, line, column, "", "the file must be a mapping of settings"))
        raise ConfigError(problems)
    context = {"base_dir": base_dir, "secret_paths": document.from_environment}
    try:
        result = model.model_validate(data, context=context)
    except ValidationError as error:
        already = {p.path for p in problems}
        found = (_problem(source, document, item) for item in error.errors())
        problems.extend(p for p in found if p.path not in already)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))
    return result


def _problem(source: str, document: _Document, item: Mapping[str, Any]) -> ConfigProblem:
    path = _location(item["loc"], document.data)
    mark = document.key_marks.get(path) if item["type"] == "extra_forbidden" else None
    mark = mark or document.mark_for(path)
    line, column = mark if mark else (None, None)
    message = str(item["msg"])
    if item["type"] == "extra_forbidden":
        message = "unknown setting"
    elif item["type"] == "missing":
        message = "required setting is missing"
    # Never echo the rejected input: it may be a secret pulled from the environment.
    return ConfigProblem(source, line, column, _dotted(path), message)


def _location(loc: tuple[Any, ...], data: Any) -> _PathKey:
    """Keep the parts of a pydantic ``loc`` that name YAML nodes (it also names union members)."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_list or (isinstance(node, dict) and part in node):
            node = node[part]
        elif index == len(loc) - 1 and isinstance(part, str | int):
            path.append(part)  # a missing or unknown key: name it, its parent locates it
            break
        else:
            continue
        path.append(part)
    return tuple(path)
