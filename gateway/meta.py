"""Meta rules: a symbol from the presence of others.

``[rule.NAME]`` tables of ``type = "meta"`` in a rules file hold an
expression over symbol names, such as ``A && !B`` or ``(A + B + C) >= 2``
(a name counts 1 when the message has that symbol, else 0). The policy
evaluates them over every symbol of a message (gateway.policy); the rules
files' loader parses them once (gateway.ruleset). Expressions are bounded:
at most ``META_LENGTH`` characters, nested at most ``META_DEPTH`` levels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.symbols import SYMBOL_NAME

META_LENGTH = 2000
META_DEPTH = 32

# A node of a meta rule's parsed expression: (kind, operands...), e.g.
# ("and", (("name", "A"), ("not", ("name", "B")))).
MetaNode = tuple[Any, ...]

_META_TOKEN = re.compile(r"\s*(?:(&&|\|\||>=|<=|==|!=|[!()<>+])|([A-Za-z_][A-Za-z0-9_]*)|"
                         r"(\d+(?:\.\d+)?))")


@dataclass(frozen=True)
class Meta:
    """``A && !B``, ``(A + B + C) >= 2``: a symbol from the presence of others
    (a name counts 1 when the message has that symbol, else 0)."""

    name: str
    expression: str
    tree: MetaNode
    names: frozenset[str]
    description: str
    score: float

    def holds(self, present: set[str]) -> bool:
        return bool(_evaluate(self.tree, present))


def parse_meta(expression: str) -> tuple[MetaNode, frozenset[str]]:
    """The expression's tree and the names it reads; raises ValueError."""
    if len(expression) > META_LENGTH:
        raise ValueError(f"longer than {META_LENGTH} characters")
    tokens: list[tuple[str, str]] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _META_TOKEN.match(text, position)
        if match is None or match.end() == position:
            rest = text[position:].lstrip()
            raise ValueError(f"cannot read {rest[:20]!r}")
        operator, name, number = match.groups()
        if name is not None and not SYMBOL_NAME.match(name):
            raise ValueError(f"{name!r}: symbol names are UPPER_SNAKE_CASE")
        tokens.append(("op", operator) if operator else ("name", name) if name
                      else ("num", number))
        position = match.end()
    parser = _MetaParser(tokens)
    tree = parser.expression(0)
    if parser.index != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.index][1]!r}")
    return tree, frozenset(parser.names)


class _MetaParser:
    """expr: or; or: and ('||' and)*; and: not ('&&' not)*; not: '!' not | cmp;
    cmp: sum (op number)?; sum: atom ('+' atom)*; atom: NAME | number | '(' expr ')'."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.index = 0
        self.names: set[str] = set()

    def peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.index >= len(self.tokens):
            raise ValueError("the expression ends too soon")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expression(self, depth: int) -> MetaNode:
        if depth > META_DEPTH:
            raise ValueError(f"nested more than {META_DEPTH} levels")
        items = [self.conjunction(depth)]
        while self.peek() == "||":
            self.take()
            items.append(self.conjunction(depth))
        return items[0] if len(items) == 1 else ("or", tuple(items))

    def conjunction(self, depth: int) -> MetaNode:
        items = [self.negation(depth)]
        while self.peek() == "&&":
            self.take()
            items.append(self.negation(depth))
        return items[0] if len(items) == 1 else ("and", tuple(items))

    def negation(self, depth: int) -> MetaNode:
        if self.peek() == "!":
            self.take()
            return ("not", self.negation(depth + 1))
        return self.comparison(depth)

    def comparison(self, depth: int) -> MetaNode:
        left = self.total(depth)
        if self.peek() in (">", ">=", "<", "<=", "==", "!="):
            operator = self.take()[1]
            kind, value = self.take()
            if kind != "num":
                raise ValueError(f"{operator} needs a number after it, not {value!r}")
            return ("cmp", operator, left, float(value))
        return left

    def total(self, depth: int) -> MetaNode:
        items = [self.atom(depth)]
        while self.peek() == "+":
            self.take()
            items.append(self.atom(depth))
        return items[0] if len(items) == 1 else ("sum", tuple(items))

    def atom(self, depth: int) -> MetaNode:
        kind, value = self.take()
        if kind == "name":
            self.names.add(value)
            return ("name", value)
        if kind == "num":
            return ("num", float(value))
        if value == "(":
            inner = self.expression(depth + 1)
            if self.peek() != ")":
                raise ValueError("a '(' is not closed")
            self.take()
            return inner
        raise ValueError(f"unexpected {value!r}")


_COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__,
            "==": float.__eq__, "!=": float.__ne__}


def _evaluate(node: MetaNode, present: set[str]) -> float:
    kind = node[0]
    if kind == "name":
        return 1.0 if node[1] in present else 0.0
    if kind == "num":
        return float(node[1])
    if kind == "not":
        return 0.0 if _evaluate(node[1], present) else 1.0
    if kind == "and":
        return 1.0 if all(_evaluate(n, present) for n in node[1]) else 0.0
    if kind == "or":
        return 1.0 if any(_evaluate(n, present) for n in node[1]) else 0.0
    if kind == "sum":
        return sum(_evaluate(n, present) for n in node[1])
    _, operator, left, value = node
    return 1.0 if _COMPARE[operator](float(_evaluate(left, present)), value) else 0.0
