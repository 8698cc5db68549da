#!/usr/bin/env python3
"""An example agent that uses meshagent through its local daemon.

    agent.py serve --home DIR --action read:logs [--count N] [--long]
        serves read:logs: answers each verified request with some log lines;
        --long sends two signed progress messages first, as a long job would
    agent.py call --home DIR --to PEERID --action read:logs [--progress] [--token FILE]
        calls read:logs on another agent and prints the verified reply;
        --progress prints each verified progress message on stderr as it
        comes; --token presents that token (one this agent holds)
    agent.py delegate --home DIR --to PEERID --scopes read:logs [--ttl 10m]
        has the daemon sign a narrower token for another agent; prints it
    agent.py subscribe --home DIR --topic tasks
        prints the verified messages of a topic, one JSON line each; exits 1
        when the stream ends (the daemon drops a reader that falls behind)

The daemon must be running (``meshagent run --home DIR``). No key ever
enters this process.
"""

import argparse
import json
import sys

from meshagent_client import Client, MeshError


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--home", required=True)
    s.add_argument("--action", required=True)
    s.add_argument("--count", type=int, default=0)
    s.add_argument("--long", action="store_true")
    c = sub.add_parser("call")
    c.add_argument("--home", required=True)
    c.add_argument("--to", required=True)
    c.add_argument("--action", required=True)
    c.add_argument("--progress", action="store_true")
    c.add_argument("--token")
    d = sub.add_parser("delegate")
    d.add_argument("--home", required=True)
    d.add_argument("--to", required=True)
    d.add_argument("--scopes", required=True)
    d.add_argument("--ttl", default="30m")
    b = sub.add_parser("subscribe")
    b.add_argument("--home", required=True)
    b.add_argument("--topic", required=True)
    args = p.parse_args()

    client = Client(args.home)
    if args.cmd == "serve":
        me = client.status()["name"]

        def read_logs(req):
            if args.long:
                for i in (1, 2):
                    req["progress"]({"progress": i, "total": 2, "message": f"step {i}"})
            return {"served_by": me, "for": req["from"], "lines": ["job 42 done", "job 43 queued"]}

        try:
            client.handle(args.action, read_logs, count=args.count)
        except MeshError as e:
            print(f"agent.py: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "subscribe":
        try:
            for msg in client.subscribe(args.topic):
                print(json.dumps(msg), flush=True)
        except MeshError as e:
            print(f"agent.py: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "delegate":
        try:
            print(client.delegate(args.to, args.scopes.split(","), ttl=args.ttl), end="")
        except MeshError as e:
            print(f"refused: {e}", file=sys.stderr)
            return 1
        return 0
    token = open(args.token).read() if args.token else None
    on_progress = None
    if args.progress:
        def on_progress(seq, body):
            print(json.dumps({"seq": seq, "body": body}), file=sys.stderr, flush=True)
    try:
        reply = client.send(args.to, args.action, {"since": "1h"}, token=token, on_progress=on_progress)
    except MeshError as e:
        print(f"rejected: {e}", file=sys.stderr)
        return 1
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
