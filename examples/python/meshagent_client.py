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

    def send(self, to, action, body, timeout=None, token=None, correlation_id=None, traceparent=None, on_progress=None):
        """Call action on peer to and return the verified reply.

        timeout: a Go duration (up to "1h"); None is the daemon's for the
        action (10s unless its config says). token: a PEM token this agent
        holds, for this call only. correlation_id: 32 hex digits, to continue
        a conversation. traceparent: W3C trace context, signed in the
        request. on_progress(seq, body), when given, is called with each of
        the callee's verified progress messages as they come.
        """
        req = {"to": to, "action": action, "body": body}
        for k, v in (("timeout", timeout), ("token", token), ("correlation_id", correlation_id), ("traceparent", traceparent)):
            if v is not None:
                req[k] = v
        if on_progress is None:
            return self._request("POST", "/v1/send", req, timeout=None)
        req["stream"] = True
        conn = UnixHTTPConnection(self.socket, timeout=None)
        conn.request("POST", "/v1/send", body=json.dumps(req).encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            payload = json.loads(resp.read() or b"null") or {}
            conn.close()
            raise MeshError(payload.get("code", "error"), payload.get("error", resp.reason))
        try:
            for ev, data in _sse(resp):
                if ev == "progress":
                    on_progress(data["seq"], data["body"])
                elif ev == "reply":
                    return data
                elif ev == "error":
                    raise MeshError(data.get("code", "error"), data.get("error", ""))
        finally:
            conn.close()
        raise MeshError("stream_ended", "the daemon ended the call's stream without a reply")

    def progress(self, request_id, body):
        """Send a signed progress message to the caller of a request being handled."""
        return self._request("POST", "/v1/progress", {"id": request_id, "body": body})

    def delegate(self, to, scopes, ttl="30m", delegatable=None, token=None):
        """Have the daemon sign a narrower token for agent to; returns it as PEM text.

        The refusals are those of 'meshagent token delegate' (MeshError with
        code escalation, wildcard, not_holder...).
        """
        req = {"to": to, "scopes": list(scopes), "ttl": ttl}
        if delegatable:
            req["delegatable"] = list(delegatable)
        if token is not None:
            req["token"] = token
        return self._request("POST", "/v1/delegate", req)["token"]

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
        for ev, d in _sse(resp):
            if ev in ("", "message"):
                yield d
            elif ev == "error":
                conn.close()
                e = d if isinstance(d, dict) else {"error": str(d)}
                raise MeshError(e.get("code", "error"), e.get("error", str(d)))
            # Other events (cancel: a call handed out is over) are not read here.
        conn.close()
        raise MeshError("stream_ended", "the daemon ended the stream (it stopped, or dropped this reader)")

    def handle(self, action, fn, count=0, timeout=None):
        """Serve action: fn(request) returns the reply body (any JSON value).

        request["progress"](body) sends a signed progress message to the
        caller before the reply. timeout (a Go duration, up to "1h") is how
        long the daemon waits for each reply; None is its default.
        """
        served = 0
        path = "/v1/handle?action=" + action + ("&timeout=" + timeout if timeout else "")
        for req in self._events(path):
            req["progress"] = lambda body, rid=req["id"]: self.progress(rid, body)
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


def _sse(resp):
    """Yield (event name, decoded data) of a server-sent-event response until it ends."""
    event, data = "", None
    while True:
        line = resp.readline()  # the body, chunked encoding removed
        if not line:
            return
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
        try:
            yield ev, json.loads(d)
        except ValueError:
            yield ev, d
