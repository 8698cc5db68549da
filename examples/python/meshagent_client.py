"""A client of the meshagent daemon's local API, standard library only.

The daemon (``meshagent run --home DIR``) holds the agent's key and signs,
verifies and audits every message; this process only talks HTTP + JSON to
it over the Unix socket DIR/api.sock.
"""

import http.client
import json
import os
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("meshagent", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class MeshError(Exception):
    """A call the mesh rejected; code is the stable reason code."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    def __init__(self, home):
        self.socket = os.path.join(home, "api.sock")

    def _request(self, method, path, body=None, timeout=30):
        conn = UnixHTTPConnection(self.socket, timeout=timeout)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = json.loads(resp.read() or b"null")
        conn.close()
        if resp.status // 100 != 2:
            raise MeshError(payload.get("code", "error"), payload.get("error", ""))
        return payload

    def status(self):
        return self._request("GET", "/v1/status")

    def peers(self):
        return self._request("GET", "/v1/peers")

    def send(self, to, action, body, timeout="10s"):
        return self._request("POST", "/v1/send", {"to": to, "action": action, "body": body, "timeout": timeout})

    def publish(self, topic, action, body):
        return self._request("POST", "/v1/publish", {"topic": topic, "action": action, "body": body})

    def _events(self, path):
        conn = UnixHTTPConnection(self.socket, timeout=None)
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise MeshError("error", resp.read().decode())
        while True:
            line = resp.fp.readline()
            if not line:
                return
            line = line.decode().rstrip("\n")
            if line.startswith("data: "):
                yield json.loads(line[len("data: "):])

    def handle(self, action, fn, count=0):
        """Serve action: fn(request) returns the reply body (any JSON value)."""
        served = 0
        for req in self._events("/v1/handle?action=" + action):
            try:
                reply = {"id": req["id"], "body": fn(req)}
            except Exception as e:  # the caller sees handler_error
                reply = {"id": req["id"], "error": str(e)}
            self._request("POST", "/v1/reply", reply)
            served += 1
            if count and served >= count:
                return

    def subscribe(self, topic):
        yield from self._events("/v1/subscribe?topic=" + topic)
