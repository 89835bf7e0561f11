#!/usr/bin/env python3
"""The HTTP upstream of the proxy tests: a keep-alive HTTP/1.1 server on loopback.

Prints its port on the first line of stdout, then serves until killed. Each request is
answered by path:

  /stats            {"connections": N, "requests": M} (TCP connections accepted, requests)
  /length?n=BYTES   BYTES of the pattern (byte i is i % 251), with Content-Length
  /chunked?n=BYTES  the same pattern, chunked (chunks of up to 64 KiB) with a trailer
  /close?n=BYTES    the same pattern, delimited by closing the connection
  /slow?ms=MS       waits MS milliseconds, then echoes
  /status/CODE      an empty response with that status (204, 304, ...)
  /reset            closes the connection without answering
  anything else     echoes the request as JSON: method, path, version, headers (a list of
                    [name, value] as received), body length and SHA-256, the connection's
                    number and how many requests it carried
Request bodies are read by Content-Length or chunked framing (trailers included).
"""

import hashlib
import http.server
import json
import socket
import sys
import threading
import time
import urllib.parse

PATTERN = bytes(range(251)) * 1024
LOCK = threading.Lock()
STATS = {"connections": 0, "requests": 0}


def pattern(n):
    out = bytearray()
    while len(out) < n:
        out += PATTERN[: n - len(out)]
    return bytes(out)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with LOCK:
            STATS["connections"] += 1
            self.conn_no = STATS["connections"]
        self.conn_requests = 0

    def log_message(self, *args):
        pass

    def read_body(self):
        digest, length = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(70000)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(70000) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    part = self.rfile.read(min(left, 1 << 16))
                    if not part:
                        raise ConnectionError("short chunk")
                    digest.update(part)
                    length += len(part)
                    left -= len(part)
                self.rfile.readline(10)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                part = self.rfile.read(min(left, 1 << 16))
                if not part:
                    raise ConnectionError("short body")
                digest.update(part)
                length += len(part)
                left -= len(part)
        return length, digest.hexdigest()

    def send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        length, sha = self.read_body()
        with LOCK:
            STATS["requests"] += 1
        self.conn_requests += 1
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        n = int(query.get("n", ["0"])[0])
        if url.path == "/stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            return self.send(200, body)
        if url.path == "/length":
            return self.send(200, pattern(n), "application/octet-stream")
        if url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Length")
            self.end_headers()
            data = pattern(n)
            for i in range(0, len(data), 1 << 16):
                part = data[i : i + (1 << 16)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Length: %d\r\n\r\n" % n)
            return
        if url.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(pattern(n))
            self.close_connection = True
            return
        if url.path == "/reset":
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.close_connection = True
            self.wfile = open("/dev/null", "wb")
            return
        if url.path.startswith("/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("X-Status", str(code))
            self.end_headers()
            return
        if url.path == "/slow":
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
        doc = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_length": length,
            "body_sha256": sha,
            "connection": self.conn_no,
            "connection_requests": self.conn_requests,
        }
        self.send(200, json.dumps(doc).encode())

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_OPTIONS = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
