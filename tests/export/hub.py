"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, enough for `create_repo` + `upload_folder`.

The real hub cannot be reached from the tests; this one answers the same endpoints and records
every request (headers, JSON body, the uploaded files' bytes), so a test can check what an
export sends to the hub. Point huggingface_hub at it with HF_ENDPOINT (read when it is imported,
so only in a subprocess) and HF_HUB_OFFLINE=0. Every file is answered `regular` (sent inline in
the commit), never LFS/xet, so the uploaded bytes arrive in the commit request itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ZERO_SHA = "0" * 40


class FakeHub:
    def __init__(self):
        self.requests: list[dict] = []  # {"method", "path", "headers" (lower-case names), "json"}
        self.uploaded: dict[str, bytes] = {}  # path in repo -> bytes
        self.unknown: list[str] = []  # requests this stand-in does not know: the test should fail on them
        self.url = ""


@contextlib.contextmanager
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the test reads hub.requests instead
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()] if raw else []
            hub.requests.append({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                 "json": lines[0] if len(lines) == 1 else lines})
            path = self.path.split("?")[0]
            if path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry, fetched once a day
                return self._reply(200, {"standardEnvVars": [], "harnesses": {}})
            if path == "/api/repos/create":
                body = lines[0]
                repo = f"{body.get('organization') or 'user'}/{body['name']}"
                return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": "fake"})
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                         for f in lines[0]["files"]]
                return self._reply(200, {"files": files, "commitOid": ZERO_SHA})
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
                for line in lines:
                    if line.get("key") == "file":
                        value = line["value"]
                        hub.uploaded[value["path"]] = base64.b64decode(value["content"])
                repo = match.group(1)
                return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40,
                                         "success": True})
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/[^/]+)?", path):
                return self._reply(200, {"id": match.group(1), "sha": ZERO_SHA, "siblings": [], "private": True})
            hub.unknown.append(f"{self.command} {self.path}")
            return self._reply(404, {"error": f"the fake hub does not know {self.command} {path}"})

        do_GET = do_POST = do_PUT = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
