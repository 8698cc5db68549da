#!/usr/bin/env python3
"""An example agent that uses meshagent through its local daemon.

    agent.py serve --home DIR --action read:logs [--count N]
        serves read:logs: answers each verified request with some log lines
    agent.py call --home DIR --to PEERID --action read:logs
        calls read:logs on another agent and prints the verified reply
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
    c = sub.add_parser("call")
    c.add_argument("--home", required=True)
    c.add_argument("--to", required=True)
    c.add_argument("--action", required=True)
    b = sub.add_parser("subscribe")
    b.add_argument("--home", required=True)
    b.add_argument("--topic", required=True)
    args = p.parse_args()

    client = Client(args.home)
    if args.cmd == "serve":
        me = client.status()["name"]

        def read_logs(req):
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
    try:
        reply = client.send(args.to, args.action, {"since": "1h"})
    except MeshError as e:
        print(f"rejected: {e}", file=sys.stderr)
        return 1
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
