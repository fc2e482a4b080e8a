"""`hyperion-node doctor`: what is wrong with this node's set-up, and the exact fix for each problem.

Local checks run without a daemon (data-dir permissions, GPU driver, configured ports, bootstrap peers
reachable from here); checks that need the running node (reachability from a peer through a dial-back,
bootstrap membership, clock skew against peers) are asked of it through the control API.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from typing import Any

import multiaddr
import typer

from hyperion_node.config import Config
from hyperion_node.datadir import DataDir, private_file_problem, running_pid

BOOTSTRAP_PROBE_TIMEOUT_S = 3.0


def _check(name: str, ok: bool | None, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def local_checks(cfg: Config) -> list[dict[str, Any]]:
    from hyperion_node.hardware import probe_hardware

    dd = DataDir(cfg.node.data_dir)
    checks: list[dict[str, Any]] = []
    if not dd.root.exists():
        checks.append(_check("data dir", None, f"{dd.root} does not exist yet",
                             "it is created by `hyperion-node start`"))
    else:
        mode = _mode(dd.root)
        checks.append(_check("data dir", not mode & 0o077, f"{dd.root} mode {mode:04o}", f"chmod 700 {dd.root}"))
        for path in (dd.key_path, dd.token_path):
            if path.exists():
                # The same check the daemon and the CLI make before they use the file (datadir.py).
                problem = private_file_problem(path)
                detail = f"mode {_mode(path):04o}"
                if problem is not None and not problem.fix.startswith("chmod"):
                    detail += f", {problem.detail}"
                checks.append(_check(path.name, problem is None, detail, problem.fix if problem else ""))
    profile = probe_hardware(dd.root if dd.root.exists() else Path.home())
    checks.append(_check(
        "GPU driver", bool(profile.gpus) or None,
        profile.gpu_status if not profile.gpus else ", ".join(g.name for g in profile.gpus),
        "install the NVIDIA driver to serve GPU work; without it the node serves CPU work only",
    ))
    if "zk-groth16" not in cfg.runtimes_disabled:
        checks.append(_zk_kernel_check())
    if running_pid(dd) is None:
        for key, host, port in (("p2p.tcp_port", cfg.p2p.listen_host, cfg.p2p.tcp_port),
                                ("api.port", cfg.api.host, cfg.api.port)):
            if port == 0:
                continue
            free = _port_free(host, port)
            checks.append(_check(key, free, f"{host}:{port} {'free' if free else 'in use'}",
                                 f"stop what uses port {port}, or set {key} to a free port (0 picks one)"))
    for addr in cfg.p2p.bootstrap:
        ok, detail = _tcp_reachable(addr)
        checks.append(_check(f"bootstrap reachable {addr.rsplit('/', 1)[-1][-8:]}", ok, detail,
                             f"check the address in p2p.bootstrap and that the peer runs: {addr}"))
    return checks


def _zk_kernel_check() -> dict[str, Any]:
    """The ZK runtime's native kernel: proofs are 2-4x slower without it, so say how to get it."""
    from runtimes.zk import native

    name = "ZK native kernel"
    if not native.buildable():
        detail = f"not available ({native.unavailable_reason}); proofs use gmpy2 or Python ints, 2-4x slower"
        return _check(name, None, detail,
                      "apt-get install build-essential (and unset HYPERION_ZK_NATIVE), then scripts/setup.sh")
    path = native.built()
    if path is None:
        return _check(name, None, "not built yet: the first proof builds it (~5 s)",
                      "scripts/setup.sh, or: python -m runtimes.zk.native")
    ok = native.load() is not None
    return _check(name, ok, str(path) if ok else native.unavailable_reason,
                  f"rm {path} and run python -m runtimes.zk.native; proofs use gmpy2 or Python ints meanwhile")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _tcp_reachable(addr: str) -> tuple[bool, str]:
    try:
        maddr = multiaddr.Multiaddr(addr)
        host, port = maddr.value_for_protocol("ip4"), int(maddr.value_for_protocol("tcp"))
    except Exception as exc:  # multiaddr raises several types for odd input
        return False, f"not an /ip4/<addr>/tcp/<port>/p2p/<id> address ({type(exc).__name__})"
    try:
        with socket.create_connection((host, port), timeout=BOOTSTRAP_PROBE_TIMEOUT_S):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def print_checks(checks: list[dict[str, Any]]) -> None:
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    for item in checks:
        typer.echo(f"{marks[item['ok']]}  {item['name']}: {item['detail']}")
        if item["ok"] is not True and item["fix"]:
            typer.echo(f"      fix: {item['fix']}")
