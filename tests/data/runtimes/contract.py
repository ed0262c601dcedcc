"""The runtime contract suite's function (tests/it/runtimes.rs), written as for Kubeless's Python runtime."""
import os
import time
import uuid


def handler(event, context):
    data = event["data"]
    if not isinstance(data, dict):
        return {"text": data.decode() if isinstance(data, bytes) else data}
    op = data.get("op")
    if op == "raise":
        raise ValueError("the function failed on purpose")
    if op == "unpicklable":
        return lambda: "a function cannot travel between processes"
    if op == "exit":
        os._exit(3)
    if op == "spin":
        while True:  # only the runtime's timeout can stop this
            pass
    if op == "sleep":
        time.sleep(data["seconds"])
        return "slept"
    if op == "barrier":
        # Waits until `n` calls are inside the function at once (files in a shared directory).
        open(os.path.join(data["dir"], str(uuid.uuid4())), "w").close()
        deadline = time.time() + data["wait"]
        while time.time() < deadline:
            if len(os.listdir(data["dir"])) >= data["n"]:
                return "met"
            time.sleep(0.05)
        return "alone"
    request = event["extensions"]["request"]
    return {
        "data": data,
        "event-id": event["event-id"],
        "event-type": event["event-type"],
        "event-time": event["event-time"],
        "event-namespace": event["event-namespace"],
        "context": context,
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
    }
