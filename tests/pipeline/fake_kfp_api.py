"""A stubbed Kubeflow Pipelines API server over real HTTP on 127.0.0.1 (no Kubeflow here): it answers the few
v2beta1 endpoints `python -m pipeline submit` reaches through kfp.Client (healthz, experiments, runs) as the
real one does, also behind the Kubernetes API server's service-proxy path, or a scripted status for every request
(`status`, `location` for a redirect), and records the paths and the Authorization / Cookie headers it received
(`requests`)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeKfpApi:
    def __init__(self, status: int = 200, multi_user: bool = False, location: str = "") -> None:
        self.status, self.multi_user, self.location = status, multi_user, location
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKfpApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path.startswith("/apis/v2beta1/healthz"):
            return 200, {"multi_user": self.multi_user, "commit_sha": "stub", "tag_name": "2.5.0"}
        if path.startswith("/apis/v2beta1/experiments") and method == "GET":
            return 200, {"experiments": [{"experiment_id": "exp-1", "display_name": "unmix-swav"}], "total_size": 1}
        if path.startswith("/apis/v2beta1/runs") and method == "POST":
            return 200, {"run_id": "run-1", "display_name": body.get("display_name", ""),
                         "experiment_id": body.get("experiment_id", "")}
        return 404, {"error": "Not Found", "code": 5, "message": "Not Found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                # Without --host kfp comes through the Kubernetes API server's service proxy: serve that path too.
                path = re.sub(r"^/api/v1/namespaces/[^/]+/services/ml-pipeline:http/proxy", "", self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                api.requests.append({"method": method, "path": path, "proxied": path != self.path,
                                     "authorization": self.headers.get("Authorization"),
                                     "cookie": self.headers.get("Cookie")})
                if api.status != 200:
                    code, answer = api.status, {"error": "stub", "code": 16, "message": f"stub answers {api.status}"}
                else:
                    code, answer = api._answer(method, path, body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                if api.location:
                    self.send_header("Location", api.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

        return Handler
