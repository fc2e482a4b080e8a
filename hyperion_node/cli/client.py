"""The CLI's client for a running daemon's control API, found through the data dir alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from hyperion_node.api.guard import dashboard_url
from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem, HyperionError, NodeNotRunning, UserError

REQUEST_TIMEOUT_S = 10.0


class ApiClient:
    def __init__(self, data_dir: DataDir) -> None:
        info = data_dir.read_api_info()
        self.base_url: str = info["url"]
        self.pid: int = info.get("pid", -1)
        self._token = data_dir.api_token(create=False)
        self._data_dir = data_dir

    @property
    def dashboard_url(self) -> str:
        return dashboard_url(self.base_url, self._token)

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

    def post_stream(self, path: str, body: dict[str, Any], *, timeout_s: float) -> Iterator[dict[str, Any]]:
        """POST a JSON body and yield the NDJSON events of the answer as they arrive."""
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            with httpx.stream("POST", self.base_url + path, json=body, headers=headers,
                              timeout=httpx.Timeout(REQUEST_TIMEOUT_S, read=timeout_s)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _answer_error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise NodeNotRunning(
                f"the hyperion-node on {self._data_dir.root} (PID {self.pid}) stopped answering at {self.base_url}",
                hint="check `hyperion-node doctor`, or restart the node",
            ) from exc


def _answer_error(response: httpx.Response) -> HyperionError:
    try:
        message = str(response.json().get("error") or response.text)
    except ValueError:
        message = response.text
    if response.status_code == 400:
        return UserError(message[:500])
    if response.status_code == 401:
        return EnvironmentProblem("the node rejected the API token", hint="restart the node")
    return EnvironmentProblem(f"the node answered {response.status_code}: {message[:500]}")
