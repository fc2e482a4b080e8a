"""Generate ``docs/configuration.md`` from ``configs/default.toml`` (issue #23).

The page is the hand-written head in ``docs/configuration.head.md`` (layers, environment variables, errors,
renamed keys) followed by one section per TOML table of the defaults, each a table of its keys with their
default and, as "what it does", the comment written above the key in the TOML file joined into one line.
``scripts/gen_config_docs.py`` writes it; ``--check`` (and ``tests/unit/test_config_docs.py``, which CI runs)
fails when the checked-in page differs from what it would write.

The TOML text is read line by line for its structure and comments (``[table]`` headers, comment blocks, ``key =
value`` lines, values spanning several lines); the values themselves come from ``tomllib``, so they are exactly
what the node loads. Keys written one under another with no comment of their own share the comment above the
first of them, and say so. A comment block not directly above a key (a blank line follows it, or a header, which
it is then about) is a note on its table, printed above the table's keys; the block above the first header is the
file's own preamble, which the hand-written head covers, and is left out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path("configs/default.toml")
HEAD = Path("docs/configuration.head.md")
TARGET = Path("docs/configuration.md")
COMMAND = "python scripts/gen_config_docs.py"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LEADING_HTML_COMMENT = re.compile(r"\A\s*<!--.*?-->[ \t]*\n*", re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
_SIZE_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


@dataclass
class Key:
    """One ``key = value`` line: its key (dotted parts), its own comment, or the key above whose comment it shares."""

    parts: tuple[str, ...]
    comment: str
    shares_with: tuple[str, ...] | None
    line: int


@dataclass
class Table:
    """One ``[table]`` of the file (``parts`` empty for keys above the first header), in the file's order."""

    parts: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)


class ParseError(ValueError):
    """The TOML file uses a form this line parser does not read (tomllib itself has accepted the file)."""


# --- reading the TOML text --------------------------------------------------------------------------------------


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _parse_key(text: str, pos: int, lineno: int) -> tuple[tuple[str, ...], int]:
    """A (dotted) key starting at ``pos``: its parts and the position after it."""
    parts: list[str] = []
    while True:
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] in "\"'":
            quote = text[pos]
            end = pos + 1
            while end < len(text) and text[end] != quote:
                end += 2 if quote == '"' and text[end] == "\\" else 1
            if end >= len(text):
                raise ParseError(f"line {lineno}: unterminated quoted key")
            parts.append(tomllib.loads(f"k = {text[pos:end + 1]}")["k"])
            pos = end + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if match is None:
                raise ParseError(f"line {lineno}: expected a key in {text.strip()!r}")
            parts.append(match.group())
            pos = match.end()
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


def _scan_value(lines: Sequence[str], index: int, pos: int) -> tuple[int, str | None]:
    """Skip the value starting at ``lines[index][pos]``, however many lines it spans.

    Returns the index of the line after it and the comment that ends its last line, if any (comments inside a
    multi-line array or inline table are left out: they are about an element, not the key).
    """
    depth = 0
    line = lines[index]
    while True:
        if pos >= len(line):
            if depth == 0:
                return index + 1, None
            index += 1
            if index >= len(lines):
                raise ParseError("unterminated array or inline table at the end of the file")
            line, pos = lines[index], 0
            continue
        char = line[pos]
        if char == "#":
            if depth == 0:
                return index + 1, line[pos + 1 :].strip()
            pos = len(line)
        elif line.startswith(('"""', "'''"), pos):
            index, line, pos = _skip_multiline_string(lines, index, pos)
        elif char in "\"'":
            end = pos + 1
            while end < len(line) and line[end] != char:
                end += 2 if char == '"' and line[end] == "\\" else 1
            pos = end + 1
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            pos += 1


def _skip_multiline_string(lines: Sequence[str], index: int, pos: int) -> tuple[int, str, int]:
    delimiter = lines[index][pos : pos + 3]
    line, pos = lines[index], pos + 3
    while True:
        found = line.find(delimiter, pos)
        while found != -1 and delimiter == '"""' and _escaped(line, found):
            found = line.find(delimiter, found + 1)
        if found != -1:
            end = found + 3
            while line.startswith(delimiter[0], end) and end - found < 5:  # up to two quotes may end the content
                end += 1
            return index, line, end
        index += 1
        if index >= len(lines):
            raise ParseError("unterminated multi-line string at the end of the file")
        line, pos = lines[index], 0


def _escaped(line: str, pos: int) -> bool:
    backslashes = 0
    while pos - backslashes - 1 >= 0 and line[pos - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _comment_text(block: Sequence[str]) -> str:
    return " ".join(line for line in (raw.strip() for raw in block) if line)


def parse(text: str) -> list[Table]:
    """The tables of a TOML text with each key's comment, in the file's order."""
    lines = text.splitlines()
    tables = [Table(parts=())]
    comment: list[str] = []  # the comment block being read
    group: tuple[str, ...] | None = None  # the key whose comment the next bare key line shares

    def end_comment_block() -> None:
        if comment and tables[-1].parts:  # the block above the first header is the file's preamble
            tables[-1].notes.append(_comment_text(comment))
        comment.clear()

    index = 0
    while index < len(lines):
        lineno, stripped = index + 1, lines[index].strip()
        if not stripped:
            end_comment_block()
            group = None
            index += 1
        elif stripped.startswith("#"):
            comment.append(stripped[1:])
            group = None
            index += 1
        elif stripped.startswith("[["):
            raise ParseError(f"line {lineno}: arrays of tables ({stripped}) are not documented by this generator")
        elif stripped.startswith("["):
            group = None
            parts, pos = _parse_key(stripped, 1, lineno)
            rest = stripped[pos:]
            if not rest.startswith("]") or not (rest[1:].strip() == "" or rest[1:].lstrip().startswith("#")):
                raise ParseError(f"line {lineno}: expected a table header, got {stripped!r}")
            tables.append(Table(parts=parts))
            if len(tables) > 2:  # a block right above a header (but the file's preamble) is a note on its table
                end_comment_block()
            comment.clear()
            index += 1
        else:
            parts, pos = _parse_key(lines[index], 0, lineno)
            if pos >= len(lines[index]) or lines[index][pos] != "=":
                raise ParseError(f"line {lineno}: expected `key = value`, got {stripped!r}")
            index, inline = _scan_value(lines, index, pos + 1)
            own = _comment_text([*comment, inline or ""])
            comment.clear()
            if own or group is None:
                tables[-1].keys.append(Key(parts=parts, comment=own, shares_with=None, line=lineno))
                group = parts
            else:
                tables[-1].keys.append(Key(parts=parts, comment="", shares_with=group, line=lineno))
    end_comment_block()
    return [table for table in tables if table.parts or table.keys]


# --- writing Markdown --------------------------------------------------------------------------------------------


def dotted(parts: Sequence[str]) -> str:
    """A key path as TOML writes it: ``runtimes.render-blender.threads``."""
    return ".".join(part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False) for part in parts)


def toml_literal(value: Any) -> str:
    """``value`` written as a TOML value (floats in plain notation: ``0.000002``, not ``2e-06``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are all valid in a TOML basic string
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        if "e" in text or "E" in text:
            text = format(Decimal(text), "f")
            if "." not in text:
                text += ".0"
        return text
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{dotted([k])} = {toml_literal(v)}" for k, v in value.items()) + " }"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(f"no TOML form for {value!r}")


def code(text: str) -> str:
    """``text`` as a Markdown code span inside a table cell."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def prose(text: str) -> str:
    """Comment text as a table cell: ``|`` escaped everywhere, and ``<`` outside code spans (``<peer ID>`` would
    otherwise be taken for an HTML tag and vanish)."""
    out: list[str] = []
    pos = 0
    for match in _CODE_SPAN.finditer(text):
        out.append(text[pos : match.start()].replace("<", "\\<"))
        out.append(match.group())
        pos = match.end()
    out.append(text[pos:].replace("<", "\\<"))
    return "".join(out).replace("|", "\\|")


def _size_note(parts: Sequence[str], value: Any) -> str:
    if not parts[-1].endswith("_bytes") or isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return ""
    for unit, size in _SIZE_UNITS:
        if value >= size and value % size == 0:
            return f" ({value // size} {unit})"
    return ""


def _lookup(data: Mapping[str, Any], parts: Sequence[str], where: str) -> Any:
    node: Any = data
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            raise ParseError(f"{where}: {dotted(parts)} is not in what tomllib read")
        node = node[part]
    return node


def _leaves(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, value in data.items():
        if isinstance(value, dict):  # a table, or an inline table (whose key the parser finds); empty: no keys
            yield from _leaves(value, (*prefix, name))
        else:
            yield (*prefix, name)


def documented_keys(toml_text: str) -> list[str]:
    """Every key of the TOML text, dotted from its table, in the file's order."""
    return [dotted((*table.parts, *key.parts)) for table in parse(toml_text) for key in table.keys]


def render_tables(toml_text: str) -> str:
    """The generated part of the page: one section per table of ``toml_text``."""
    data = tomllib.loads(toml_text)
    tables = parse(toml_text)
    found = {(*table.parts, *key.parts) for table in tables for key in table.keys}
    for leaf in _leaves(data):
        if not any(leaf[:n] in found for n in range(1, len(leaf) + 1)):
            raise ParseError(f"{dotted(leaf)} is in the file but the line parser did not find its line")
    sections: list[str] = []
    for table in tables:
        title = f"`[{dotted(table.parts)}]`" if table.parts else "Top level"
        lines = [f"### {title}", ""]
        for note in table.notes:
            lines += [prose(note), ""]
        if table.keys:
            lines += ["| key | default | what it does |", "|---|---|---|"]
        for key in table.keys:
            path = (*table.parts, *key.parts)
            value = _lookup(data, path, f"line {key.line}")
            if key.shares_with is not None:
                what = f"See {code(dotted(key.shares_with))} above."
            else:
                what = prose(key.comment) or "(no comment in the file)"
            lines.append(f"| {code(dotted(path))} | {code(toml_literal(value))}{_size_note(path, value)} | {what} |")
        sections.append("\n".join(lines).rstrip("\n") + "\n")
    return "\n".join(sections)


def render(toml_text: str, head: str) -> str:
    """The whole page: a note that it is generated, the hand-written head, then the tables."""
    head = _LEADING_HTML_COMMENT.sub("", head, count=1).strip("\n")
    banner = (
        f"<!--\nGenerated by `{COMMAND}` from {SOURCE.as_posix()} (the key tables) and\n"
        f"{HEAD.as_posix()} (the text above them): edit those and rerun it, not this file.\n-->"
    )
    return f"{banner}\n\n{head}\n\n{render_tables(toml_text)}"


def generate(root: Path = REPO) -> str:
    """The page as the files under ``root`` make it."""
    return render((root / SOURCE).read_text(encoding="utf-8"), (root / HEAD).read_text(encoding="utf-8"))


def check(root: Path = REPO) -> str | None:
    """None when ``docs/configuration.md`` under ``root`` is current, else a one-line message with the fix."""
    target = root / TARGET
    current = target.read_text(encoding="utf-8") if target.exists() else None
    if current == generate(root):
        return None
    state = "is missing" if current is None else f"is out of date with {SOURCE.as_posix()} or {HEAD.as_posix()}"
    return f"{TARGET.as_posix()} {state}; regenerate it with: {COMMAND}"


def write(root: Path = REPO) -> bool:
    """Write ``docs/configuration.md`` under ``root``; whether it changed."""
    target = root / TARGET
    text = generate(root)
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return False
    target.write_text(text, encoding="utf-8", newline="\n")
    return True


def main(argv: Sequence[str] | None = None, root: Path = REPO) -> int:
    parser = argparse.ArgumentParser(
        prog="gen_config_docs.py",
        description=f"Write {TARGET.as_posix()} from {SOURCE.as_posix()} and {HEAD.as_posix()}.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the file on disk is stale")
    args = parser.parse_args(argv)
    if args.check:
        message = check(root)
        if message is not None:
            print(message)
            return 1
        print(f"{TARGET.as_posix()} is up to date")
        return 0
    changed = write(root)
    print(f"{'wrote' if changed else 'unchanged:'} {TARGET.as_posix()}")
    return 0
