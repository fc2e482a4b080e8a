"""The CLI's client for a running daemon's control API, found through the data dir alone.

Standard library only (``http.client``): a command that asks the daemon one question should start at once,
and an HTTP client package costs a quarter of a second to import.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any
from urllib.parse import urlencode, urlsplit

from hyperion_node.api.guard import dashboard_url
from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem, HyperionError, NodeNotRunning, UserError

REQUEST_TIMEOUT_S = 10.0
_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class ApiClient:
    def __init__(self, data_dir: DataDir) -> None:
        info = data_dir.read_api_info()
        self.base_url: str = info["url"]
        self.pid: int = info.get("pid", -1)
        self._token = data_dir.api_token(create=False)
        self._data_dir = data_dir
        where = urlsplit(self.base_url)
        self._host, self._port = where.hostname or "127.0.0.1", where.port or 80

    @property
    def dashboard_url(self) -> str:
        return dashboard_url(self.base_url, self._token)

    def _request(self, method: str, path: str, body: bytes | None, read_timeout_s: float
                 ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers = {"Authorization": f"Bearer {self._token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self._host, self._port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(read_timeout_s)
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def get(self, path: str, **params: Any) -> Any:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        try:
            conn, response = self._request("GET", path + (f"?{query}" if query else ""), None, REQUEST_TIMEOUT_S)
            with closing(conn):
                status, data = response.status, response.read()
        except _TRANSPORT_ERRORS as exc:
            raise NodeNotRunning(
                f"the hyperion-node on {self._data_dir.root} (PID {self.pid}) does not answer at {self.base_url}",
                hint="check `hyperion-node doctor`, or restart the node",
            ) from exc
        text = data.decode("utf-8", "replace")
        if status == 401:
            raise EnvironmentProblem(
                f"the node at {self.base_url} rejected the token in {self._data_dir.token_path}",
                hint="the token file changed since the node started; restart the node",
            )
        if status >= 400:
            raise EnvironmentProblem(f"the node answered {status}: {text[:200]}")
        return json.loads(text)

    def post(self, path: str, body: dict[str, Any], *, timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
        """POST a JSON body; the answer's JSON. A 400 is the user's mistake (``UserError``, its message)."""
        return next(iter(self.post_stream(path, body, timeout_s=timeout_s)))

    def post_stream(self, path: str, body: dict[str, Any], *, timeout_s: float) -> Iterator[dict[str, Any]]:
        """POST a JSON body and yield the NDJSON events of the answer as they arrive."""
        try:
            conn, response = self._request("POST", path, json.dumps(body).encode(), timeout_s)
            with closing(conn):
                if response.status >= 400:
                    raise _answer_error(response.status, response.read().decode("utf-8", "replace"))
                for line in response:
                    if line.strip():
                        yield json.loads(line)
        except _TRANSPORT_ERRORS as exc:
            raise NodeNotRunning(
                f"the hyperion-node on {self._data_dir.root} (PID {self.pid}) stopped answering at {self.base_url}",
                hint="check `hyperion-node doctor`, or restart the node",
            ) from exc


def _answer_error(status: int, text: str) -> HyperionError:
    try:
        message = str(json.loads(text).get("error") or text)
    except (ValueError, AttributeError):
        message = text
    if status in (400, 404):
        return UserError(message[:500])
    if status == 401:
        return EnvironmentProblem("the node rejected the API token", hint="restart the node")
    return EnvironmentProblem(f"the node answered {status}: {message[:500]}")
