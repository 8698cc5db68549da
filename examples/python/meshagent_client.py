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
        """Yield the data of each message event of a server-sent-event stream.

        A stream that ends before its reader stops raises MeshError: with
        the daemon's code when it said why in a last ``event: error``
        (``fell_behind``: this reader fell more than 8 MiB behind, the
        daemon dropped it; subscribe again), ``stream_ended`` otherwise.
        """
        conn = UnixHTTPConnection(self.socket, timeout=None)
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status != 200:
            try:
                payload = json.loads(resp.read())
            except ValueError:
                payload = {}
            raise MeshError(payload.get("code", "error"), payload.get("error", resp.reason))
        event, data = "", None
        while True:
            line = resp.readline()  # the body, chunked encoding removed
            if not line:
                conn.close()
                raise MeshError("stream_ended", "the daemon ended the stream (it stopped, or dropped this reader)")
            line = line.decode().rstrip("\r\n")
            if line:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data = value if data is None else data + "\n" + value
                continue
            # A blank line ends an event.
            ev, d = event, data
            event, data = "", None
            if d is None:
                continue
            if ev in ("", "message"):
                yield json.loads(d)
            elif ev == "error":
                conn.close()
                try:
                    e = json.loads(d)
                except ValueError:
                    e = {"error": d}
                raise MeshError(e.get("code", "error"), e.get("error", d))

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
        """Yield the verified messages of topic; see _events for how it ends."""
        yield from self._events("/v1/subscribe?topic=" + topic)
