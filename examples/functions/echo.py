#!/usr/bin/env python3
"""A stand-in for a Kubeless function runtime: prints every event it receives and answers 200.

Usage: echo.py [PORT]   (default 8080, like Kubeless runtimes)
"""
import http.server
import sys
import threading

LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        # Kubeless runtimes answer GET /healthz with "OK".
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        line = (
            f"event-id={self.headers.get('event-id')} topic={self.headers.get('event-topic')} "
            f"partition={self.headers.get('event-partition')} offset={self.headers.get('event-offset')} "
            f"key={self.headers.get('event-key')} type={self.headers.get('event-type')} body={body.decode(errors='replace')}"
        )
        with LOCK:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
