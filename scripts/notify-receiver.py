#!/usr/bin/env python3
"""A local receiver for `hotlead notify`, used by scripts/demo.sh.

Usage: notify-receiver.py PORT SECRET_FILE

Listens on 127.0.0.1:PORT, answers every POST with 200 and prints one line
per notification: the path (the destination), whether the webhook signature
verifies with the secret in SECRET_FILE, and what the message says. It
counts repeats by Idempotency-Key, as a real receiver should drop them.
"""
import hashlib
import hmac
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SECRET = open(sys.argv[2], "rb").read().rstrip(b"\r\n")
SEEN = set()
LOCK = threading.Lock()


def verify(header, body):
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - t) <= 300 and hmac.compare_digest(expected, parts.get("v1", ""))


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()
        key = (self.path, self.headers.get("Idempotency-Key", ""))
        with LOCK:
            repeat = " (repeat, dropped)" if key in SEEN else ""
            SEEN.add(key)
        try:
            message = json.loads(body)
        except ValueError:
            message = {}
        signature = self.headers.get("X-Hotlead-Signature")
        if signature is None:
            kind, what = "chat", message.get("text", "")
        else:
            kind = "webhook, signature " + ("ok" if verify(signature, body) else "BAD")
            what = message.get("explanation", {}).get("summary", "")
        with LOCK:
            print(f"  ↳ notified {self.path} ({kind}){repeat}: {what}", flush=True)

    def log_message(self, *args):
        pass


def stop(*_):
    sys.exit(0)


# Ctrl-C and SIGTERM end it quietly, with success.
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
