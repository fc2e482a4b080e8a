"""Routing policies (hyperion_node/api/routing.py): the file's checks name the line, splits take their share."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hyperion_node.api.routing import Draws, RoutingPolicies
from hyperion_node.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "configs" / "routing.example.toml"


def test_the_example_file_loads() -> None:
    policies = RoutingPolicies.load(EXAMPLE)
    assert sorted(policies.aliases) == ["assistant", "chat"]
    chat = policies.aliases["chat"]
    assert chat.canary is not None
    assert (chat.model, chat.canary.percent) == ("gemma-3-270m-q4_k_m", 10.0)


@pytest.mark.parametrize(("text", "line", "key", "expected"), [
    ('[aliases.a]\nmodel = "m"\n\ncanary = { model = "c", percent = 140 }\n', 4, "aliases.a.canary.percent",
     "from 0 to 100"),
    ('[aliases.a]\nmodel = "m"\ncanry = 1\n', 3, "aliases.a.canry", "one of: ab, canary, model, shadow"),
    ('[aliases.a]\nmodel = "m"\n\n[aliases.b]\nmodel = 3\n', 5, "aliases.b.model", "the model the alias stands for"),
    ('[aliases.a]\nmodel = "m"\nshadow = "x"\n', 3, "aliases.a.shadow", 'model = "..."'),
    ('[routes.a]\nmodel = "m"\n', 1, "routes", "[aliases.<name>]"),
])
def test_a_mistake_is_refused_with_its_line(tmp_path: Path, text: str, line: int, key: str, expected: str) -> None:
    path = tmp_path / "routing.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        RoutingPolicies.load(path)
    message = raised.value.one_line()
    assert f"{path}:{line}: {key}" in message
    assert expected in message


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routing.toml"
    path.write_text("[aliases.a\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RoutingPolicies.load(path)


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 99])
def test_a_split_takes_its_share_of_any_run_of_requests(percent: int) -> None:
    draws = Draws(random.Random(percent))
    hits = [draws.hit("chat", "canary", percent) for _ in range(1000)]
    for start in range(0, 900, 100):
        assert abs(sum(hits[start:start + 100]) - percent) <= 1  # any 100 requests in a row


def test_ab_is_sticky_per_user_and_splits_users(tmp_path: Path) -> None:
    path = tmp_path / "routing.toml"
    path.write_text('[aliases.a]\nmodel = "m"\nab = { model = "b", percent = 50 }\n')
    policies, draws = RoutingPolicies.load(path), Draws()
    for user in ("alice", "bob", "carol", "dave"):
        assert len({policies.resolve("a", user, draws).model for _ in range(10)}) == 1
    arms = [policies.resolve("a", f"user-{n}", draws).arm for n in range(1000)]
    assert 430 <= arms.count("b") <= 570  # users split by a hash, about half each
    assert policies.resolve("other-model", "alice", draws).model == "other-model"  # not an alias: as it is
