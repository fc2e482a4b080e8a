"""Config precedence (defaults < file < environment < flags), provenance, and every validation error."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hyperion_node.api.settings import ApiSettings
from hyperion_node.config import load_config
from hyperion_node.config.loader import DEFAULTS_SOURCE, default_toml_text
from hyperion_node.errors import ConfigError, UserError
from hyperion_node.p2p.settings import P2PSettings
from hyperion_node.settings import InvalidSetting
from hyperion_node.tasks.messages import MAX_REQUEST_BYTES
from hyperion_node.verify.settings import VerifySettings

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_embedded_defaults_are_the_documented_file() -> None:
    assert default_toml_text() == (REPO / "configs" / "default.toml").read_text()


def test_defaults_alone_give_a_complete_config(tmp_path: Path) -> None:
    cfg = load_config(environ={"HOME": str(tmp_path)})
    assert cfg.api.host == "127.0.0.1"
    assert cfg.api.port == 8787
    assert cfg.node.data_dir == tmp_path / ".local/share/hyperion"
    assert all(source.startswith(DEFAULTS_SOURCE) for _, _, source in cfg.show())
    # An empty data_dir is shown as the directory it resolves to.
    assert ("node.data_dir", str(tmp_path / ".local/share/hyperion"), f"{DEFAULTS_SOURCE}: XDG default") in cfg.show()
    # Every key of the documented file is shown.
    documented = tomllib.loads(default_toml_text())
    assert len(cfg.show()) == sum(
        len([v for v in t.values() if not isinstance(v, dict)]) + sum(len(s) for s in t.values() if isinstance(s, dict))
        for t in documented.values()
    )


def test_api_defaults_close_everything_and_fit_the_largest_task(tmp_path: Path) -> None:
    api = load_config(environ={"HOME": str(tmp_path)}).api
    assert api.allowed_hosts == ()
    assert api.metrics_public is False
    # The largest body the API must take: a task request at the task protocol's cap, base64-encoded.
    assert api.max_body_bytes >= MAX_REQUEST_BYTES * 4 // 3 + 64 * 1024
    assert api.max_body_bytes <= 128 * 1024 * 1024  # and not far above it: the cap is what memory holds


def test_api_allowed_hosts_are_taken_lower_cased(tmp_path: Path) -> None:
    api = load_config(environ={"HOME": str(tmp_path)}, sets=['api.allowed_hosts=["Node.LAN", "[fd00::7]:8443"]']).api
    assert api.allowed_hosts == ("node.lan", "[fd00::7]:8443")


def test_xdg_data_home_is_honoured(tmp_path: Path) -> None:
    cfg = load_config(environ={"HOME": "/nowhere", "XDG_DATA_HOME": str(tmp_path)})
    assert cfg.node.data_dir == tmp_path / "hyperion"


def test_file_then_env_then_flags_override_in_that_order(tmp_path: Path) -> None:
    user = write(tmp_path / "user.toml", '[api]\nport = 9000\n[logging]\nlevel = "debug"\n[p2p]\ntcp_port = 5000\n')
    env = {"HOME": str(tmp_path), "HYPERION_API__PORT": "9001", "HYPERION_P2P__TCP_PORT": "5001"}
    cfg = load_config(config_file=user, environ=env, sets=["p2p.tcp_port=5002"])
    assert cfg.logging.level == "debug"  # file only
    assert cfg.api.port == 9001  # env beats file
    assert cfg.p2p.tcp_port == 5002  # flag beats env and file
    assert cfg.sources["logging.level"] == str(user)
    assert cfg.sources["api.port"] == "environment HYPERION_API__PORT"
    assert cfg.sources["p2p.tcp_port"] == "flag --set p2p.tcp_port"


def test_data_dir_flag_beats_environment_short_form(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "HYPERION_DATA_DIR": str(tmp_path / "from-env")}
    assert load_config(environ=env).node.data_dir == tmp_path / "from-env"
    cfg = load_config(environ=env, data_dir=tmp_path / "from-flag")
    assert cfg.node.data_dir == tmp_path / "from-flag"
    assert cfg.sources["node.data_dir"] == "flag --data-dir"


def test_config_toml_in_the_data_dir_is_picked_up(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", "[api]\nport = 7000\n")
    cfg = load_config(data_dir=tmp_path, environ={"HOME": "/nowhere"})
    assert cfg.api.port == 7000
    assert cfg.sources["api.port"] == str(tmp_path / "config.toml")


def test_env_values_are_read_as_toml(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "HYPERION_P2P__BOOTSTRAP": '["/ip4/127.0.0.1/tcp/4001/p2p/QmX"]',
           "HYPERION_HARDWARE__BENCHMARK_ON_START": "false", "HYPERION_NODE__NAME": "gpu-box"}
    cfg = load_config(environ=env)
    assert cfg.p2p.bootstrap == ("/ip4/127.0.0.1/tcp/4001/p2p/QmX",)
    assert cfg.hardware.benchmark_on_start is False
    assert cfg.node.name == "gpu-box"


def test_an_integer_is_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    cfg = load_config(environ={"HOME": str(tmp_path)}, sets=["hardware.telemetry_interval_s=2"])
    assert cfg.hardware.telemetry_interval_s == 2.0


def test_third_party_runtime_tables_pass_through(tmp_path: Path) -> None:
    user = write(tmp_path / "u.toml", '[runtimes.audio]\nvoices = ["a"]\n[runtimes.inference]\nmax_streams = 3\n')
    cfg = load_config(config_file=user, environ={"HOME": str(tmp_path)})
    assert cfg.runtime_settings["audio"] == {"voices": ["a"]}
    assert cfg.runtime_settings["inference"]["max_streams"] == 3


def test_spending_limits_per_runtime(tmp_path: Path) -> None:
    user = write(tmp_path / "u.toml", "[spending]\ndaily_budget = 2.5\n[spending.max_price_per_unit]\n"
                                      'inference = 0.00001\n"zk-groth16" = 0\n')
    spending = load_config(config_file=user, environ={"HOME": str(tmp_path)}).spending
    assert spending.daily_budget == 2.5
    assert spending.max_price_per_unit == {"inference": 0.00001, "zk-groth16": 0.0}


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[api]\nprt = 1\n", "api.prt", "one of: api.allowed_hosts, api.host, api.max_body_bytes"),
        ('[api]\nallowed_hosts = ["http://node.lan"]\n', "api.allowed_hosts", "host names or addresses"),
        ('[api]\nallowed_hosts = ["*"]\n', "api.allowed_hosts", "host names or addresses"),
        ('[api]\nallowed_hosts = ["node.lan:99999"]\n', "api.allowed_hosts", "optional :port"),
        ("[api]\nmax_body_bytes = 1000\n", "api.max_body_bytes", "at least 65536"),
        ('[api]\nmetrics_public = "yes"\n', "api.metrics_public", "true or false"),
        ('[api]\nport = "80"\n', "api.port", "an integer"),
        ("[api]\nport = 70000\n", "api.port", "a port from 0 to 65535"),
        ('[logging]\nlevel = "loud"\n', "logging.level", "one of debug, info, warning, error"),
        ('[logging]\nformat = "xml"\n', "logging.format", "one of auto, console, json"),
        ("[hardware]\ntelemetry_interval_s = 0\n", "hardware.telemetry_interval_s", "above 0"),
        ("[hardware]\nbenchmark_on_start = 1\n", "hardware.benchmark_on_start", "true or false"),
        ('[p2p]\nbootstrap = ["example.com:4001"]\n', "p2p.bootstrap", "multiaddrs"),
        ("[p2p]\nbootstrap = [1]\n", "p2p.bootstrap", "a list of strings"),
        ("[runtimes.inference]\nslotz = 2\n", "runtimes.inference.slotz", "runtimes.inference.max_streams"),
        ("[verify]\ninference_chunks = -1\n", "verify.inference_chunks", "at least 0"),
        ("[spending]\ndaily_budget = -1\n", "spending.daily_budget", "credits >= 0"),
        ('[spending.max_price_per_unit]\ninference = "cheap"\n', "spending.max_price_per_unit.inference",
         "credits per work unit"),
        ("[spending]\nbudget = 1\n", "spending.budget", "spending.daily_budget"),
        ("[api]\nmax_choices = 0\n", "api.max_choices", "from 1 to 16"),
        ("[p2p]\nsuspect_after_s = 1.0\n", "p2p.suspect_after_s", "more seconds than p2p.heartbeat_interval_s"),
        ("[p2p]\ntarget_connections = 1\n", "p2p.target_connections", "an integer of at least 2"),
        ("[ledger]\nepoch_receipts = 0\n", "ledger.epoch_receipts", "an integer of at least 1"),
        ("[blobs]\nfetch_streams = 17\n", "blobs.fetch_streams", "from 1 to 16"),
        ("[tasks]\nqueue_depth = -1\n", "tasks.queue_depth", "an integer >= 0"),
        ("[scheduler.breaker]\nmax_cooldown_s = 1.0\n", "scheduler.breaker.max_cooldown_s",
         "at least scheduler.breaker.cooldown_s"),
        ("[scheduler.weights]\nmemory = 0\njobs = 0\nrtt = 0\nthroughput = 0\nprice = 0\nreliability = 0\n",
         "scheduler.weights", "at least one weight above 0"),
    ],
)
def test_validation_errors_name_file_key_and_expectation(tmp_path: Path, text: str, key: str, expected: str) -> None:
    user = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=user, environ={"HOME": str(tmp_path)})
    err = info.value
    assert err.source == str(user)
    assert err.key == key
    assert expected in err.one_line()
    assert str(user) in err.one_line()
    assert key in err.one_line()
    assert err.exit_code == 2


def test_validation_error_from_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"HOME": str(tmp_path), "HYPERION_API__PORT": "many"})
    assert info.value.source == "environment HYPERION_API__PORT"
    assert "an integer" in info.value.one_line()


def test_validation_error_from_a_flag_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"HOME": str(tmp_path)}, sets=["api.port=-1"])
    assert info.value.source == "flag --set api.port"


@pytest.mark.parametrize("item", ["api.port", "=3", "noequals"])
def test_malformed_set_flag(tmp_path: Path, item: str) -> None:
    with pytest.raises(UserError, match=r"section\.key=value"):
        load_config(environ={"HOME": str(tmp_path)}, sets=[item])


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    user = write(tmp_path / "broken.toml", "[api\nport = 1\n")
    with pytest.raises(UserError, match=r"broken\.toml: not valid TOML"):
        load_config(config_file=user, environ={"HOME": str(tmp_path)})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(config_file=tmp_path / "nope.toml", environ={"HOME": str(tmp_path)})


@pytest.mark.parametrize(("old", "new"), [("p2p.gossip_degree", "p2p.target_connections"),
                                          ("ledger.gossip_interval_s", "ledger.dealings_interval_s")])
def test_a_renamed_key_is_refused_with_its_new_name(old: str, new: str) -> None:
    with pytest.raises(ConfigError, match=rf"{old}: this key is now {new}"):
        load_config(data_dir=Path("/nonexistent/hyperion-test"), environ={}, sets=[f"{old}=1"])


def test_a_section_checks_its_bounds_wherever_it_is_made() -> None:
    """The bounds live with the section, not in the loader: a section made in code is held to them too."""
    with pytest.raises(InvalidSetting) as caught:
        VerifySettings(budget=1.5)
    assert (caught.value.key, caught.value.expected) == ("verify.budget", "a share from 0 to 1")
    with pytest.raises(InvalidSetting, match=r"p2p\.dead_after_s"):
        P2PSettings(listen_host="127.0.0.1", tcp_port=0, announce_addrs=(), bootstrap=(), dead_after_s=10.0)
    assert ApiSettings(host="127.0.0.1", port=0, allowed_hosts=("Node.LAN",)).allowed_hosts == ("node.lan",)
