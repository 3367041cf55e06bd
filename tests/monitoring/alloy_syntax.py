"""A reader of Grafana Alloy's configuration syntax (the subset docker/alloy/config.alloy uses),
for the static checks of tests/monitoring/test_logs_stack.py: Alloy itself cannot be installed on
the build machines.

What it reads (Alloy docs, "Configuration syntax" and "Types and values"): `//` and `/* */`
comments; blocks `name.path "label" { ... }` or `name { ... }`; attributes `name = expr`; and
expressions made of double-quoted strings (Go escapes), raw strings in backticks, numbers,
`true`/`false`/`null`, lists `[...]`, objects `{key = value, "key" = value}`, references
`a.b.c`, calls `a.b(args)` and `+`. Anything else is a `SyntaxError` naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TOKEN = re.compile(r"""
    (?P<space>\s+) | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`)
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[.={}\[\](),+])
""", re.VERBOSE | re.DOTALL)
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Ref:
    """A reference to an export (`loki.process.redact.receiver`) or a name."""

    path: str


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Concat:
    parts: tuple[Any, ...]


@dataclass
class Block:
    """`name "label" { attributes; blocks }` (`label` None for an unlabelled block)."""

    name: str
    label: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    line: int = 0


def _tokens(text: str) -> list[tuple[str, str, int]]:
    found, pos = [], 0
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise SyntaxError(f"line {line}: unexpected {text[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            found.append((kind, match.group(), text.count("\n", 0, pos) + 1))
        pos = match.end()
    return found


def _unquote(token: str, line: int) -> str:
    out, chars = [], iter(token[1:-1])
    for char in chars:
        if char == "\\":
            escaped = next(chars)
            if escaped not in ESCAPES:
                raise SyntaxError(f"line {line}: unknown escape \\{escaped}")
            out.append(ESCAPES[escaped])
        else:
            out.append(char)
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str, int]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("eof", "", -1)

    def take(self, value: str | None = None, kind: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if (value is not None and token[1] != value) or (kind is not None and token[0] != kind):
            raise SyntaxError(f"line {token[2]}: expected {value or kind}, got {token[1]!r}")
        self.pos += 1
        return token

    def dotted(self) -> str:
        parts = [self.take(kind="ident")[1]]
        while self.peek()[1] == "." and self.peek(1)[0] == "ident":
            self.take(".")
            parts.append(self.take(kind="ident")[1])
        return ".".join(parts)

    def body(self, closing: str | None) -> Block:
        block = Block("", None)
        while self.peek()[1] != (closing or "") and self.peek()[0] != "eof":
            line = self.peek()[2]
            name = self.dotted()
            if self.peek()[1] == "=":
                self.take("=")
                if "." in name or name in block.attributes:
                    raise SyntaxError(f"line {line}: bad or repeated attribute {name!r}")
                block.attributes[name] = self.expr()
                continue
            label = _unquote(self.take(kind="string")[1], line) if self.peek()[0] == "string" \
                else None
            self.take("{")
            inner = self.body("}")
            self.take("}")
            block.blocks.append(Block(name, label, inner.attributes, inner.blocks, line))
        return block

    def expr(self) -> Any:
        parts = [self.primary()]
        while self.peek()[1] == "+":
            self.take("+")
            parts.append(self.primary())
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def primary(self) -> Any:
        kind, value, line = self.peek()
        if kind == "string":
            self.pos += 1
            return _unquote(value, line)
        if kind == "raw":
            self.pos += 1
            return value[1:-1]
        if kind == "number":
            self.pos += 1
            return float(value) if "." in value else int(value)
        if value == "[":
            return self.sequence("[", "]", self.expr)
        if value == "{":
            return dict(self.sequence("{", "}", self.entry))
        if kind == "ident":
            name = self.dotted()
            if name in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[name]
            if self.peek()[1] == "(":
                return Call(name, tuple(self.sequence("(", ")", self.expr)))
            return Ref(name)
        raise SyntaxError(f"line {line}: unexpected {value!r}")

    def entry(self) -> tuple[str, Any]:
        kind, value, line = self.take()
        if kind not in ("ident", "string"):
            raise SyntaxError(f"line {line}: object key expected, got {value!r}")
        self.take("=")
        return (_unquote(value, line) if kind == "string" else value), self.expr()

    def sequence(self, opening: str, closing: str, item: Any) -> list[Any]:
        self.take(opening)
        items = []
        while self.peek()[1] != closing:
            items.append(item())
            if self.peek()[1] != closing:
                self.take(",")
        self.take(closing)
        return items


def parse(text: str) -> list[Block]:
    """The top-level blocks of an Alloy configuration; SyntaxError naming the line."""
    parser = _Parser(text)
    root = parser.body(None)
    if root.attributes:
        raise SyntaxError(f"attributes outside a block: {sorted(root.attributes)}")
    return root.blocks


def refs(value: Any) -> list[Ref]:
    """Every reference inside an expression."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, list | tuple):
        return [r for item in value for r in refs(item)]
    if isinstance(value, dict):
        return [r for item in value.values() for r in refs(item)]
    if isinstance(value, Concat | Call):
        return refs(value.args if isinstance(value, Call) else value.parts)
    return []
