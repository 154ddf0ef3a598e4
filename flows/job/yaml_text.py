"""YAML as job files and command-line values may write it: no anchors or aliases (never
expanded), bounded nesting, and no key given twice. One reader for job files, ``--set`` and
``--grid`` values."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKey(ValueError):
    """A key given twice; the message names it (and its lines)."""


ALIAS_REFUSED = "YAML anchors/aliases (&name / *name) are not supported; write the values out"
MAX_NESTING = 64  # a job is a few levels deep; PyYAML and json recurse per level (RecursionError)


class YamlRefused(ValueError):
    """A YAML construct a job file may not use; the message names its line."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and deep nesting while composing, before anything
    is built.

    An alias makes a node shared, not copied, but everything after composing (the duplicate-key
    walk, pydantic) expands it: nine levels of nine aliases ("billion laughs") are 9**9 values
    from a 1 kB file and kept `validate` busy for minutes. Job files have no use for
    them, so the first anchor or alias is an error naming its line. Nesting is bounded too, so a
    file of thousands of '[' is an error, not a RecursionError.
    """

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlRefused(f"line {line}: {ALIAS_REFUSED}")
        if self._depth >= MAX_NESTING:
            raise YamlRefused(f"line {line}: nested more than {MAX_NESTING} levels deep; a job file is a few levels deep")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, check_duplicates: bool = True) -> Any:
    """``yaml.safe_load`` without anchors/aliases (and, by default, without duplicate keys)."""
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if check_duplicates:
            _reject_duplicate_yaml_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_yaml_keys(node, where: str = "") -> None:
    """YAML keeps the last of two equal keys without a word; a job file must not."""
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            field = f"{where}.{key}" if where else str(key)
            if key in seen:
                raise DuplicateKey(f"{field}: given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                    "keep one")
            seen[key] = key_node.start_mark.line + 1
            _reject_duplicate_yaml_keys(value_node, field)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_yaml_keys(item, f"{where}.{i}" if where else str(i))
