"""docs/configuration.md is generated from configs/default.toml and must be current (issue #23)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hyperion_node.config import docs

REPO = Path(__file__).resolve().parents[2]


def leaf_keys(table: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, value in table.items():
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_checked_in_page_is_current() -> None:
    message = docs.check(REPO)
    assert message is None, message  # the message names the command that regenerates the page


def test_every_key_of_the_defaults_is_in_the_page_with_its_default() -> None:
    text = (REPO / docs.SOURCE).read_text(encoding="utf-8")
    defaults = tomllib.loads(text)
    page = docs.generate(REPO)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in page.splitlines() if line.startswith("| `")}
    keys = leaf_keys(defaults)
    assert len(keys) > 50
    for key in keys:
        assert f"`{key}`" in rows, f"{key} is in {docs.SOURCE} but not in the generated page"
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        assert rows[f"`{key}`"].split(" | ")[1].startswith(f"`{docs.toml_literal(value)}`"), key
    assert docs.documented_keys(text) == keys  # same keys, in the file's order


def test_stale_or_missing_page_is_reported_with_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (docs.SOURCE, docs.HEAD):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    message = docs.check(tmp_path)
    assert message is not None
    assert "missing" in message
    assert docs.COMMAND in message
    assert docs.main([], root=tmp_path) == 0
    assert docs.check(tmp_path) is None
    assert docs.write(tmp_path) is False  # unchanged

    source = tmp_path / docs.SOURCE
    source.write_text(source.read_text().replace("port = 8787", "port = 8788"))
    capsys.readouterr()
    assert docs.main(["--check"], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "out of date" in out
    assert docs.COMMAND in out


SAMPLE = """\
# The file's own preamble: not in the page.

[a]
# Host and port.
host = "0.0.0.0"
port = 1  # (inline) 0 picks one.
# A list | with a pipe, and <data dir> outside code but `<kept>` inside.
items = [
    "x # not a comment",  # about the element, left out
    'y',
]
tiny = 0.000002
size_bytes = 100663296

# A note on [a], followed by a blank line.

# A note on [a.b], right above its header.
[a.b]
"quoted key" = "a|b"
multi = \"\"\"
line = not a key
\"\"\"
after = true
"""


def test_parser_reads_comments_groups_and_values() -> None:
    tables = docs.parse(SAMPLE)
    assert [t.parts for t in tables] == [("a",), ("a", "b")]
    a, ab = tables
    assert [k.parts for k in a.keys] == [("host",), ("port",), ("items",), ("tiny",), ("size_bytes",)]
    assert a.keys[0].comment == "Host and port."
    assert a.keys[1].comment == "(inline) 0 picks one."  # an inline comment is the key's own
    assert a.keys[3].shares_with == ("items",)
    assert a.notes == ["A note on [a], followed by a blank line."]
    assert ab.notes == ["A note on [a.b], right above its header."]
    assert [k.parts for k in ab.keys] == [("quoted key",), ("multi",), ("after",)]
    assert docs.documented_keys(SAMPLE) == [
        "a.host", "a.port", "a.items", "a.tiny", "a.size_bytes", 'a.b."quoted key"', "a.b.multi", "a.b.after",
    ]


def test_rendered_cells_are_escaped_and_values_exact() -> None:
    page = docs.render_tables(SAMPLE)
    assert "| `a.items` | `[\"x # not a comment\", \"y\"]` | A list \\| with a pipe, and \\<data dir> outside code " \
        "but `<kept>` inside. |" in page
    assert "| `a.tiny` | `0.000002` | See `items` above. |" in page
    assert "| `a.size_bytes` | `100663296` (96 MiB) |" in page
    assert '| `a.b."quoted key"` | `"a\\|b"` |' in page
    assert "about the element" not in page
    assert "preamble" not in page
    for line in page.splitlines():
        if line.startswith("| `"):
            assert line.replace("\\|", "").count("|") == 4, line  # three cells, whatever the text holds


def test_toml_the_line_parser_does_not_read_is_an_error() -> None:
    with pytest.raises(docs.ParseError, match="arrays of tables"):
        docs.render_tables("[[servers]]\nhost = 'a'\n")
