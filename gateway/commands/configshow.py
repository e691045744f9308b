"""``gateway config show``: the effective configuration as commented TOML."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from gateway.commands.common import config_from
from gateway.config import SECTIONS, Config
from gateway.pipeline import check_classes
from gateway.registry import SITE_SECTION


def main(args: argparse.Namespace) -> int:
    print(render(config_from(args)))
    return 0


def render(config: Config) -> str:
    lines = [f"# effective configuration from {config.source}"]
    for name in (f.name for f in dataclasses.fields(Config) if f.name in SECTIONS):
        lines += _section(name, getattr(config, name))
    # The settings of the enabled site checks that declare them (gateway.checks).
    for check in check_classes(config, []):
        if check.section is not None:
            lines += _section(f"{SITE_SECTION}.{check.name}", check.options_of(config, []))
    for limit in config.ratelimit:  # [[ratelimit]] tables, as given
        lines.append("\n[[ratelimit]]")
        lines += [f"{f.name} = {_toml(getattr(limit, f.name))}" for f in dataclasses.fields(limit)]
    return "\n".join(lines)


def _section(name: str, section: Any) -> list[str]:
    lines = [f"\n[{name}]"]
    for field in dataclasses.fields(section):
        doc = field.metadata.get("doc")
        if doc:
            lines.append(f"# {doc}")
        lines.append(f"{field.name} = {_toml(getattr(section, field.name))}")
    return lines


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot render {value!r} as TOML")
