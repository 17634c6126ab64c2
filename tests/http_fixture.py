"""A real HTTP file server on 127.0.0.1 for staging tests and benchmarks, with faults on request.

It serves the files under a folder, honours `Range: bytes=a-` / `bytes=a-b` (206 + Content-Range, 416 past
the end), and can be told to misbehave the way download hosts do:
- `drop_after[path] = n`: send n bytes of the body, then cut the connection (once per entry);
- `cut_at[path] = offset`: every response for that path stops at that byte of the file (a host that always
  fails at the same place: a resume there makes no progress);
- `fail_503[path] = k`: answer 503 to the next k requests for that path;
- `ignore_range = True`: answer every request with 200 and the whole file;
- `rate_limit`: bytes per second per connection (a remote host's per-connection throughput).
Every request is recorded in `requests` as (path, Range header or None, status).

Standalone: `python tests/http_fixture.py --root DIR [--port 8765]` serves DIR until interrupted.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SEND_CHUNK = 64 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class FileServer:
    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, rate_limit: float | None = None):
        self.root = Path(root)
        self.rate_limit = rate_limit
        self.drop_after: dict[str, int] = {}
        self.cut_at: dict[str, int] = {}
        self.fail_503: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most bodies being sent at once: evidence of parallel clients
        self._mutex = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FileServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http-fixture", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests_for(self, path: str) -> list[tuple[str | None, int]]:
        with self._mutex:
            return [(rng, status) for p, rng, status in self.requests if p == path]

    def _record(self, path: str, rng: str | None, status: int) -> None:
        with self._mutex:
            self.requests.append((path, rng, status))

    def _take_fault(self, table: dict[str, int], path: str, once: bool) -> int | None:
        with self._mutex:
            if path not in table:
                return None
            value = table[path]
            if once:
                del table[path]
            else:
                table[path] = value - 1
                if table[path] <= 0:
                    del table[path]
            return value


def _handler_for(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            rng = self.headers.get("Range")
            target = (server.root / path).resolve()
            if server.root.resolve() not in target.parents or not target.is_file():
                return self._status(path, rng, 404)
            if server._take_fault(server.fail_503, path, once=False):
                return self._status(path, rng, 503)
            size = target.stat().st_size
            start, end, status = 0, size - 1, 200
            if rng and not server.ignore_range:
                match = _RANGE.match(rng.strip())
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    if start >= size:
                        server._record(path, rng, 416)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
            length = end - start + 1
            server._record(path, rng, status)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            drop = server._take_fault(server.drop_after, path, once=True)
            if path in server.cut_at:
                drop = max(0, server.cut_at[path] - start)
            with server._mutex:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._send_body(target, start, length, drop)
            finally:
                with server._mutex:
                    server.in_flight -= 1

        def _send_body(self, target, start, length, drop):
            sent, began = 0, time.perf_counter()
            with open(target, "rb") as f:
                f.seek(start)
                while sent < length:
                    n = min(SEND_CHUNK, length - sent)
                    if drop is not None:
                        n = min(n, drop - sent)
                        if n <= 0:
                            self.wfile.flush()
                            self.close_connection = True
                            return  # the server closes the socket: the client sees a short body
                    self.wfile.write(f.read(n))
                    sent += n
                    if server.rate_limit:
                        ahead = sent / server.rate_limit - (time.perf_counter() - began)
                        if ahead > 0:
                            time.sleep(ahead)

        def _status(self, path, rng, code):
            server._record(path, rng, code)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate-limit", type=float, help="bytes/s per connection")
    args = parser.parse_args()
    server = FileServer(args.root, args.host, args.port, args.rate_limit)
    print(f"serving {args.root} at {server.url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
