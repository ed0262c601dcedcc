#!/usr/bin/env python3
"""The Python 3 function server: runs a Kubeless function, `handler(event, context)`, over HTTP.

The contract is Kubeless's runtime contract, so functions written for Kubeless run unchanged:

- `GET /healthz` answers "OK", `GET /metrics` serves Prometheus metrics
  (`function_calls_total`, `function_failures_total`, `function_duration_seconds`, label `method`).
- Any other request calls the function with `event` = {`data` (the body, JSON-parsed when the
  request says `application/json`, else bytes), `event-id`, `event-type`, `event-time`,
  `event-namespace`, `extensions.request` (a bottle request)} and `context` = {`function-name`,
  `timeout`, `runtime`, `memory-limit`}. What it returns is the answer (a str, bytes, a dict as JSON,
  or a bottle `HTTPResponse`).
- Each call runs in a process of its own, forked from a server that has already imported the
  function, so a call that outlives `FUNC_TIMEOUT` is killed and answered 408 while the server and
  every other call go on; an exception is answered 500 and logged.

Settings (environment): `MOD_NAME`, `FUNC_HANDLER`, `FUNC_PORT` (8080), `FUNC_ADDR` (the address
listened on, 0.0.0.0; the broker's local functions use 127.0.0.1), `FUNC_TIMEOUT` (180 s),
`FUNC_RUNTIME`, `FUNC_MEMORY_LIMIT`, `FUNC_MEMFILE_MAX` (largest body kept in memory, 100 MiB),
`FUNC_BODY_MAX` (largest body taken at all, 100 MiB; a larger one is answered 413),
`MP_CONTEXT` (`forkserver` or `spawn`), `CHERRYPY_NUMTHREADS` (calls served at once, 50), and
`KUBELESS_DIR` (where the code and its installed dependencies are: `/kubeless`).

The file name starts with an underscore so that it cannot collide with the function's module.
"""

import glob
import importlib
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import pickle
import queue
import sys
import time

import bottle
import prometheus_client as prom

THIS_MODULE = os.path.splitext(os.path.basename(__file__))[0]
CODE_DIR = os.getenv("KUBELESS_DIR", "/kubeless")


def _setting(name, default, convert):
    """An environment setting, converted; a bad value stops the server with a clear message."""
    raw = os.getenv(name, default)
    try:
        return convert(raw)
    except ValueError:
        sys.exit(f"{name}={raw!r} is not a valid {convert.__name__}")


def _load_function():
    mod_name, handler = os.getenv("MOD_NAME"), os.getenv("FUNC_HANDLER")
    if not mod_name or not handler:
        sys.exit("MOD_NAME and FUNC_HANDLER must name the function's module and handler")
    if mod_name == THIS_MODULE:
        sys.exit(f"MOD_NAME cannot be {THIS_MODULE}: that is the runtime's own module")
    # The code first, so that its modules win over standard ones of the same name (Kubeless's
    # getting started names its module `test`), then what the install step put beside it
    # (`pip install --prefix` or `--target`).
    sys.path.insert(0, CODE_DIR)
    sys.path.extend(sorted(glob.glob(os.path.join(CODE_DIR, "lib", "python3*", "site-packages"))))
    # Loaded from its file, as Kubeless's `imp.load_source` did: a name the runtime has already
    # imported (`test`, `json`…) is still the function's own module.
    path = os.path.join(CODE_DIR, mod_name + ".py")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or not os.path.isfile(path):
        sys.exit(f"{path} does not exist: MOD_NAME names the function's file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    try:
        return getattr(module, handler)
    except AttributeError:
        sys.exit(f"{mod_name}.py has no function {handler}")


FUNCTION = _load_function()
TIMEOUT = _setting("FUNC_TIMEOUT", "180", float)
bottle.BaseRequest.MEMFILE_MAX = _setting("FUNC_MEMFILE_MAX", str(100 * 1024 * 1024), int)
BODY_MAX = _setting("FUNC_BODY_MAX", str(100 * 1024 * 1024), int)
# How often a waiting call checks that its process still lives.
LIVENESS_CHECK = 0.2
CONTEXT = {
    "function-name": FUNCTION.__name__,
    "timeout": TIMEOUT,
    "runtime": os.getenv("FUNC_RUNTIME"),
    "memory-limit": os.getenv("FUNC_MEMORY_LIMIT"),
}

app = application = bottle.Bottle()
# Set in main(), in the server's process only: the multiprocessing context calls run in, and the
# metrics (registered once: this module is imported again where calls run).
calls = None
CALLS = FAILURES = DURATION = None


class DetachedRequest(bottle.BaseRequest):
    """A bottle request that can travel to the call's process: the WSGI environment's plain values
    (the request line, headers, server and client addresses) and the body, read into memory.
    Streams, the server's objects and bottle's caches stay behind."""

    PLAIN = (str, bytes, int, float, bool, tuple, type(None))

    def __init__(self, body, environ):
        plain = {k: v for k, v in environ.items() if isinstance(v, self.PLAIN) and not k.startswith("bottle.")}
        super().__init__(plain)
        self.environ["bottle.request.body"] = io.BytesIO(body)

    def __getstate__(self):
        return self.environ

    def __setstate__(self, environ):
        self.environ = environ


def _call(results, event):
    """Runs in the call's own process: the function's answer, or the exception it raised, pickled
    here, so that one which cannot be sent back is a failure now (a Queue pickles in a thread of
    its own, and a failure there would leave the caller waiting for the timeout)."""
    try:
        answer = FUNCTION(event, CONTEXT)
    except Exception as e:  # noqa: BLE001 - any failure of the function is its answer
        answer = e
    try:
        payload = pickle.dumps(answer)
    except Exception as e:  # noqa: BLE001 - an answer or exception that cannot be pickled
        what = "exception" if isinstance(answer, Exception) else "answer"
        payload = pickle.dumps(RuntimeError(f"the function's {what} cannot be sent back: {e!r}"))
    results.put(payload)


def _wait(results, process):
    """The call's pickled answer; None if its process ended without one; queue.Empty at the timeout."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        try:
            return results.get(timeout=min(left, LIVENESS_CHECK))
        except queue.Empty:
            if not process.is_alive():
                try:
                    return results.get(timeout=LIVENESS_CHECK)
                except queue.Empty:
                    return None


@app.get("/healthz")
def healthz():
    return "OK"


@app.get("/metrics")
def metrics():
    bottle.response.content_type = prom.CONTENT_TYPE_LATEST
    return prom.generate_latest(prom.REGISTRY)


@app.route("/<:re:.*>", method=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def invoke():
    request = bottle.request
    if request.content_length > BODY_MAX:
        return bottle.HTTPError(413, f"The body is larger than {BODY_MAX} bytes (FUNC_BODY_MAX)")
    body = request.body.read(BODY_MAX + 1)
    if len(body) > BODY_MAX:
        return bottle.HTTPError(413, f"The body is larger than {BODY_MAX} bytes (FUNC_BODY_MAX)")
    data = body
    if request.content_type.split(";")[0].strip().lower() == "application/json" and body:
        try:
            data = json.loads(body)
        except ValueError as e:
            return bottle.HTTPError(400, f"The body is declared application/json but is not JSON: {e}")
    event = {
        "data": data,
        "event-id": request.get_header("event-id"),
        "event-type": request.get_header("event-type"),
        "event-time": request.get_header("event-time"),
        "event-namespace": request.get_header("event-namespace"),
        "extensions": {"request": DetachedRequest(body, request.environ)},
    }
    method = request.method
    CALLS.labels(method).inc()
    with DURATION.labels(method).time():
        results = calls.Queue()
        process = calls.Process(target=_call, args=(results, event))
        process.start()
        try:
            payload = _wait(results, process)
        except queue.Empty:
            process.kill()
            process.join()
            FAILURES.labels(method).inc()
            logging.error("The function ran past its timeout of %ss and was stopped.", TIMEOUT)
            return bottle.HTTPError(408, "Timeout while processing the function")
        process.join()
        if payload is None:
            FAILURES.labels(method).inc()
            logging.error("The call's process ended without an answer (exit code %s).", process.exitcode)
            return bottle.HTTPError(500, "Internal Server Error")
        answer = pickle.loads(payload)
    if isinstance(answer, bottle.HTTPResponse):
        return answer
    if isinstance(answer, Exception):
        FAILURES.labels(method).inc()
        logging.error("The function raised %s: %s", type(answer).__name__, answer)
        return bottle.HTTPError(500, "Internal Server Error")
    return answer


def _access_log(wsgi_app):
    """One line per request on stdout, as Kubeless's runtime wrote it (wsgi-request-logger's
    ApacheFormatter: the combined log format and the time taken), which its users' scripts grep:
    `10.0.0.5 - - [16/Dec/2021:10:00:00 +0000] "GET / HTTP/1.1" 200 11 "" "curl/8.5.0" 0/1234`."""

    def logged(environ, start_response):
        started, answer = time.monotonic(), {"status": "-", "size": "-"}

        def start(s, headers, exc_info=None):
            answer["status"] = s.split(" ", 1)[0]
            for name, value in headers:
                if name.lower() == "content-length":
                    answer["size"] = value
            return start_response(s, headers, exc_info)

        try:
            return wsgi_app(environ, start)
        finally:
            micros = int((time.monotonic() - started) * 1_000_000)
            query = environ.get("QUERY_STRING", "")
            request = "{} {}{} {}".format(
                environ.get("REQUEST_METHOD", "-"),
                environ.get("PATH_INFO", ""),
                "?" + query if query else "",
                environ.get("SERVER_PROTOCOL", "-"),
            )
            print(
                '{} - - [{}] "{}" {} {} "{}" "{}" {}/{}'.format(
                    environ.get("REMOTE_ADDR", "-"),
                    time.strftime("%d/%b/%Y:%H:%M:%S %z"),
                    request,
                    answer["status"],
                    answer["size"],
                    environ.get("HTTP_REFERER", ""),
                    environ.get("HTTP_USER_AGENT", ""),
                    micros // 1_000_000,
                    micros,
                ),
                flush=True,
            )

    return logged


def _preload():
    """Nothing: starting a process starts the fork server, which imports the function once."""


def main():
    global calls, CALLS, FAILURES, DURATION
    CALLS = prom.Counter("function_calls_total", "Number of calls to user function", ["method"])
    FAILURES = prom.Counter("function_failures_total", "Number of exceptions in user function", ["method"])
    DURATION = prom.Histogram("function_duration_seconds", "Duration of user function in seconds", ["method"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = os.getenv("MP_CONTEXT", "forkserver")
    if start not in ("forkserver", "spawn"):
        sys.exit(f'MP_CONTEXT={start!r}: use "forkserver" or "spawn" (the server is threaded, so not "fork")')
    try:
        calls = multiprocessing.get_context(start)
    except ValueError:
        logging.warning("%s is not available here; calls are started with spawn.", start)
        calls = multiprocessing.get_context("spawn")
    if calls.get_start_method() == "forkserver":
        # Every call is forked from a server that imported this module, and so the function,
        # once: module-level setup in the function's code runs once, not per call.
        calls.set_forkserver_preload([THIS_MODULE])
        warm = calls.Process(target=_preload)
        warm.start()
        warm.join()
    port = _setting("FUNC_PORT", "8080", int)
    threads = _setting("CHERRYPY_NUMTHREADS", "50", int)
    logging.info("Serving %s on port %d (%d calls at once, timeout %ss).", FUNCTION.__name__, port, threads, TIMEOUT)
    host = os.getenv("FUNC_ADDR") or "0.0.0.0"
    bottle.run(_access_log(app), server="cheroot", host=host, port=port, numthreads=threads, quiet=True)


if __name__ == "__main__":
    # Serve from this file imported under its own name, so that the calls' processes find the
    # function and `_call` by that name.
    import _kubeless

    _kubeless.main()
