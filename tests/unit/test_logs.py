"""One logging pipeline: our structlog events and py-libp2p's stdlib records come out in the same format."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from hyperion_node.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_libp2p_records_flow_through_our_json_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json", libp2p_level="warning")
    structlog.get_logger("hyperion_node.test").info("ready", api="http://127.0.0.1:1")
    logging.getLogger("libp2p.network.swarm").warning("dial failed %s", "peer-x")
    logging.getLogger("libp2p.network.swarm").info("below the libp2p level")
    chatty = logging.getLogger("libp2p.network.auto_connector")
    chatty.setLevel(logging.INFO)  # as that libp2p module does to itself when imported
    chatty.info("AUTO_CONNECTOR_STATE: num_connections=0")
    lines = json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["ready", "dial failed peer-x"]
    assert lines[1]["logger"] == "libp2p.network.swarm"
    assert lines[1]["level"] == "warning"
    assert all("timestamp" in line for line in lines)


def test_libp2p_level_is_separate_from_ours(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json", libp2p_level="debug")
    logging.getLogger("libp2p.kad_dht").debug("refresh")
    structlog.get_logger("hyperion_node.test").debug("hidden at info")
    events = [line["event"] for line in json_lines(capsys.readouterr().err)]
    assert events == ["refresh"]
    configure_logging(level="debug", fmt="json", libp2p_level="warning")
    logging.getLogger("libp2p.kad_dht").debug("refresh")
    structlog.get_logger("hyperion_node.test").debug("shown at debug")
    events = [line["event"] for line in json_lines(capsys.readouterr().err)]
    assert events == ["shown at debug"]


def test_console_format_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="console")
    structlog.get_logger("hyperion_node.test").info("ready", peers=0)
    err = capsys.readouterr().err
    assert "ready" in err
    assert "peers" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])
