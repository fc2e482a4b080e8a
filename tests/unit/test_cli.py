"""Every CLI command through typer's CliRunner, without a daemon: offline commands work, daemon commands say
in one line that no node runs, and mistakes never print a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyperion_node import __version__
from hyperion_node.cli.app import app
from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("HYPERION_DATA_DIR", "HYPERION_CONFIG", "XDG_DATA_HOME", "XDG_CACHE_HOME", "HYPERION_NATIVE_CACHE",
                "HYPERION_ZK_NATIVE"):
        monkeypatch.delenv(var, raising=False)
    return CliRunner()


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("hyperion-node: ")
    return lines[0]


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("command", ["status", "peers", "rewards", "dashboard"])
def test_daemon_commands_without_daemon_exit_1_with_one_line(runner: CliRunner, tmp_path: Path, command: str) -> None:
    result = runner.invoke(app, [command, "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    line = one_line_error(result.output)
    assert "no hyperion-node is running" in line
    assert "hyperion-node start" in line


def test_id_without_key_says_how_to_create_it(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["id", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "run `hyperion-node start` once" in one_line_error(result.output)


def test_id_prints_the_peer_id(runner: CliRunner, tmp_path: Path) -> None:
    dd = DataDir(tmp_path / "n")
    dd.ensure()
    identity = load_identity(dd, create=True)
    result = runner.invoke(app, ["id", "--data-dir", str(dd.root)])
    assert result.exit_code == 0
    assert result.output.strip() == str(identity.peer_id)


def test_id_honours_the_environment_data_dir(runner: CliRunner, tmp_path: Path) -> None:
    dd = DataDir(tmp_path / "env-node")
    dd.ensure()
    identity = load_identity(dd, create=True)
    result = runner.invoke(app, ["id"], env={"HYPERION_DATA_DIR": str(dd.root)})
    assert result.output.strip() == str(identity.peer_id)


def test_hardware_json_reports_this_machine(runner: CliRunner) -> None:
    result = runner.invoke(app, ["hardware", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cpu"]["logical_cores"] >= 1
    assert data["ram_total_bytes"] > 0
    assert data["gpus"] == []
    assert data["gpu_status"]


def test_hardware_table(runner: CliRunner) -> None:
    result = runner.invoke(app, ["hardware"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("cpu ")
    assert "gpus   none: " in result.output


def test_config_show_lists_values_and_sources(runner: CliRunner, tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text("[api]\nport = 9100\n")
    result = runner.invoke(app, ["config", "show", "--json", "--config", str(user), "--set", "p2p.tcp_port=0"],
                           env={"HYPERION_LOGGING__LEVEL": "debug"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["api.port"] == {"value": 9100, "source": str(user)}
    assert data["p2p.tcp_port"] == {"value": 0, "source": "flag --set p2p.tcp_port"}
    assert data["logging.level"] == {"value": "debug", "source": "environment HYPERION_LOGGING__LEVEL"}
    assert data["api.host"]["source"].startswith("defaults")

    table = runner.invoke(app, ["config", "show", "--config", str(user)])
    assert table.exit_code == 0
    assert any(line.startswith("api.port") and str(user) in line for line in table.output.splitlines())


def test_config_error_is_one_line_with_exit_code_2(runner: CliRunner, tmp_path: Path) -> None:
    user = tmp_path / "bad.toml"
    user.write_text('[api]\nport = "eighty"\n')
    for command in (["config", "show"], ["status"], ["start"]):
        result = runner.invoke(app, [*command, "--config", str(user)])
        assert result.exit_code == 2, (command, result.output)
        line = one_line_error(result.output)
        assert str(user) in line
        assert "api.port" in line
        assert "expected an integer" in line


def test_start_on_a_locked_data_dir_names_the_running_pid(runner: CliRunner, tmp_path: Path) -> None:
    import os

    from hyperion_node.datadir import daemon_lock

    dd = DataDir(tmp_path / "busy")
    dd.ensure()
    with daemon_lock(dd):
        result = runner.invoke(app, ["start", "--data-dir", str(dd.root)])
    assert result.exit_code == 1
    assert f"PID {os.getpid()}" in one_line_error(result.output)


def test_unknown_command_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_doctor_without_daemon_runs_local_checks_and_says_what_it_could_not_check(
    runner: CliRunner, tmp_path: Path
) -> None:
    dd = DataDir(tmp_path / "n")
    dd.ensure()
    load_identity(dd, create=True)
    (dd.token_path).write_text("t")
    dd.token_path.chmod(0o644)  # a token others can read: the doctor must say how to fix it
    result = runner.invoke(app, ["doctor", "--data-dir", str(dd.root)])
    assert result.exit_code == 1, result.output
    assert "FAIL  api.token: mode 0644" in result.output
    assert f"fix: chmod 600 {dd.token_path}" in result.output
    assert "ok    identity.key: mode 0600" in result.output
    assert "running node: not running" in result.output
    # HOME is this test's: the native ZK kernel is not in its cache, so the doctor says how to build it.
    assert "--    ZK native kernel: not built yet: the first proof builds it (~5 s)" in result.output
    assert "fix: scripts/setup.sh, or: python -m runtimes.zk.native" in result.output


def test_peers_rejects_an_unknown_sort(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["peers", "--sort", "age", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "state, score, rtt, name, seen" in one_line_error(result.output)
