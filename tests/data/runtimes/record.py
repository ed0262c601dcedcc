"""A function as written for Kubeless's Python runtime: records what it was called with."""
import json
import os


def handler(event, context):
    line = {
        "id": event["event-id"],
        "namespace": event["event-namespace"],
        "type": type(event["data"]).__name__,
        "data": event["data"],
    }
    with open(os.path.join(os.environ["RECORD_DIR"], "calls.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")
    return "recorded"
