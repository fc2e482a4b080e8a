"""The CLI's client for a running daemon's control API, found through the data dir alone."""

from __future__ import annotations

from typing import Any

import httpx

from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem, NodeNotRunning

REQUEST_TIMEOUT_S = 10.0


class ApiClient:
    def __init__(self, data_dir: DataDir) -> None:
        info = data_dir.read_api_info()
        self.base_url: str = info["url"]
        self.pid: int = info.get("pid", -1)
        self._token = data_dir.api_token(create=False)
        self._data_dir = data_dir

    def get(self, path: str, **params: Any) -> Any:
        try:
            response = httpx.get(
                self.base_url + path,
                params=params,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.TransportError as exc:
            raise NodeNotRunning(
                f"the hyperion-node on {self._data_dir.root} (PID {self.pid}) does not answer at {self.base_url}",
                hint="check `hyperion-node doctor`, or restart the node",
            ) from exc
        if response.status_code == 401:
            raise EnvironmentProblem(
                f"the node at {self.base_url} rejected the token in {self._data_dir.token_path}",
                hint="the token file changed since the node started; restart the node",
            )
        if response.status_code >= 400:
            raise EnvironmentProblem(f"the node answered {response.status_code}: {response.text[:200]}")
        return response.json()
