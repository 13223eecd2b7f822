"""Reading YAML safely: a hardened SafeLoader, and config files with one-line errors.

The loader refuses what PyYAML accepts silently or expensively: a key given twice, recursive
aliases, alias bombs, control characters, nesting past the recursion limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tsearch.errors import ConfigError

MAX_YAML_NODES = 100_000  # values in a YAML document with every alias expanded (~1000x ours)
MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; anything this large is the wrong file


class YamlProblem(Exception):
    """Why a YAML text was refused (turned into a ConfigError naming the file or override)."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, as our own class so that nothing added here leaks into PyYAML's."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Refuse a key written twice in one mapping: PyYAML keeps the last one silently, so a
        second ``timesteps.sampler.params.mu`` in a search space would drop the first."""
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overrides: fine
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise YamlProblem(f"has the key {key!r} twice in one mapping (lines "
                                       f"{first[key]} and {line}); the second would silently "
                                       "replace the first: keep one")
                first[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error says so below
                continue
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """Number of values ``root`` stands for once every alias is expanded (stops past the cap).

    Aliases share nodes, so a few lines can stand for 10^7 values (a "billion laughs"), which
    our deep copies would then build; an alias inside its own anchor is a cycle.
    """
    memo: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order walk: deep nesting must not hit the recursion limit
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            children = _children(node)
            memo[key] = min(1 + sum(memo[id(c)] for c in children), MAX_YAML_NODES + 1)
            if memo[key] > MAX_YAML_NODES:
                raise YamlProblem(f"expands to more than {MAX_YAML_NODES} values (aliases "
                                   "repeated inside aliases?); write the values out")
            continue
        if key in memo:
            continue
        if key in active:
            raise YamlProblem("has a recursive alias (an anchor used inside itself)")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in memo)
    return memo[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str) -> Any:
    """One YAML document as Python data, refusing cycles and alias bombs (raises YamlProblem).

    Returns None for a document with no content (empty, or only comments).
    """
    loader = None
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters right here
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlProblem(f"is not valid YAML{where} ({problem})") from None
    except RecursionError:
        raise YamlProblem("is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise YamlProblem(f"has a value that cannot be read ({str(exc).split(';')[0]})") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, unreadable or malformed file.

    An empty file is an error, not a default run: it is almost always the wrong file.
    """
    p = Path(path)
    name = f"config file {str(p)!r}"
    if p.is_dir():
        raise ConfigError(f"{name} is a directory (give a path to a YAML file)")
    if not p.is_file():
        raise ConfigError(f"{name} does not exist (give a path to a YAML file)")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{name} is larger than {MAX_CONFIG_BYTES // 1000} KB: a config "
                              "is a few KB of YAML (wrong file?)")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text (a binary file?); give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{name} cannot be read ({exc.strerror or exc})") from None
    try:
        data = load_yaml(text)
    except YamlProblem as exc:
        raise ConfigError(f"{name} {exc}") from None
    if data is None:
        raise ConfigError(f"{name} is empty: write the sections to change (e.g. train: "
                          "{total_kimg: 5}), or {} to run every default")
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold a mapping of sections (data:, train:, ...), "
                          f"not a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{name}: top-level key {bad[0]!r} is not a section name (data, "
                          "model, train, ...)")
    return data
