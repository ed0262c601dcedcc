'use strict';
// The Node.js function server: runs a Kubeless function, `handler(event, context)`, over HTTP.
//
// The contract is Kubeless's runtime contract, so functions written for Kubeless run unchanged:
// - `GET /healthz` answers "OK", `GET /metrics` serves Prometheus metrics (`function_calls_total`,
//   `function_failures_total`, `function_duration_seconds`, label `method`: the HTTP method).
// - Any other request calls the function with `event` = {`data` (the body: JSON-parsed when the
//   request says application/json, else a string), `event-id`, `event-type`, `event-time`,
//   `event-namespace`, `extensions` {`request`, `response`} (express objects)} and `context` =
//   {`function-name`, `timeout`, `runtime`, `memory-limit`}. Its return value (or what its promise
//   resolves to) is the answer: a string as is, an object as JSON. CORS preflights are answered.
// - A call that outlives FUNC_TIMEOUT is answered 408 and the server goes on (Kubeless's runtime
//   exited the whole process): a synchronous loop is interrupted, a promise is no longer awaited.
//   An exception or a rejected promise is answered 500 and logged.
// - A promise cannot be stopped, so work past its timeout goes on in the background. While
//   FUNC_MAX_ABANDONED (16) such calls still run, new calls are answered 503 with a Retry-After of
//   the timeout instead of piling more on (the broker retries them later), and /healthz answers 503
//   (a liveness probe restarts a server whose abandoned work never ends).
//
// Settings (environment): MOD_NAME, FUNC_HANDLER, FUNC_PORT (8080), FUNC_ADDR (the address listened
// on, every one by default; the broker's local functions use 127.0.0.1), FUNC_TIMEOUT (180 s),
// FUNC_RUNTIME, FUNC_MEMORY_LIMIT, REQ_MB_LIMIT (largest body, 100 MB), FUNC_MAX_ABANDONED (16),
// KUBELESS_DIR (where the code and its node_modules are: /kubeless).

const path = require('path');
const vm = require('vm');

const express = require('express');
const morgan = require('morgan');
const prom = require('prom-client');

function setting(name, fallback) {
    const raw = process.env[name] === undefined ? fallback : process.env[name];
    const value = Number(raw);
    if (!Number.isFinite(value) || value <= 0) {
        console.error(`${name}=${JSON.stringify(raw)} is not a positive number`);
        process.exit(1);
    }
    return value;
}

const modName = process.env.MOD_NAME;
const handlerName = process.env.FUNC_HANDLER;
if (!modName || !handlerName) {
    console.error('MOD_NAME and FUNC_HANDLER must name the function\'s module and handler');
    process.exit(1);
}
const codeDir = process.env.KUBELESS_DIR || '/kubeless';
const timeout = setting('FUNC_TIMEOUT', '180');
const port = setting('FUNC_PORT', '8080');
const bodyLimit = setting('REQ_MB_LIMIT', '100');
const maxAbandoned = setting('FUNC_MAX_ABANDONED', '16');
// Calls answered 408 whose promise has not settled yet.
let abandoned = 0;

// Required from the code's own directory, so its dependencies resolve from codeDir/node_modules.
const loaded = require(path.join(codeDir, `${modName}.js`));
const func = typeof loaded === 'function' ? loaded : loaded && loaded[handlerName];
if (typeof func !== 'function') {
    console.error(`${modName}.js exports no function ${handlerName}`);
    process.exit(1);
}

const context = {
    'function-name': handlerName,
    'timeout': timeout,
    'runtime': process.env.FUNC_RUNTIME,
    'memory-limit': process.env.FUNC_MEMORY_LIMIT,
};

const calls = new prom.Counter({ name: 'function_calls_total', help: 'Number of calls to user function', labelNames: ['method'] });
const failures = new prom.Counter({ name: 'function_failures_total', help: 'Number of exceptions in user function', labelNames: ['method'] });
const duration = new prom.Histogram({ name: 'function_duration_seconds', help: 'Duration of user function in seconds', labelNames: ['method'] });

class Timeout extends Error {}

// Runs the function's synchronous part under a watchdog (a loop is interrupted after `timeout`),
// then waits for its promise, if any, no longer than what is left.
function run(event) {
    const started = Date.now();
    let result;
    try {
        result = vm.runInNewContext('f(e, c)', { f: func, e: event, c: context }, { timeout: timeout * 1000 });
    } catch (err) {
        if (err && err.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') {
            return Promise.reject(new Timeout());
        }
        return Promise.reject(err);
    }
    const left = Math.max(0, timeout * 1000 - (Date.now() - started));
    const work = Promise.resolve(result);
    let timer;
    const expired = new Promise((_, reject) => {
        timer = setTimeout(() => {
            // Answered now; the work goes on, counted until it settles.
            abandoned += 1;
            const settled = () => { abandoned -= 1; };
            work.then(settled, settled);
            reject(new Timeout());
        }, left);
    });
    return Promise.race([work, expired]).finally(() => clearTimeout(timer));
}

function answer(res, result) {
    if (res.headersSent || res.writableEnded) {
        return; // the function answered itself, through event.extensions.response
    }
    if (typeof result === 'string' || Buffer.isBuffer(result)) {
        res.send(result);
    } else if (result === undefined) {
        res.end();
    } else if (typeof result === 'object') {
        res.json(result);
    } else {
        res.send(JSON.stringify(result));
    }
}

const app = express();
app.disable('x-powered-by');
app.use(morgan('combined'));
app.use(express.raw({ type: () => true, limit: `${bodyLimit}mb` }));

app.get('/healthz', (req, res) => {
    if (abandoned >= maxAbandoned) {
        res.status(503).send(`${abandoned} calls are still running past the timeout`);
    } else {
        res.send('OK');
    }
});
app.get('/metrics', async (req, res) => {
    res.type(prom.register.contentType);
    res.send(await prom.register.metrics());
});

app.all('*', (req, res) => {
    res.set('Access-Control-Allow-Origin', '*');
    if (req.method === 'OPTIONS' && req.get('access-control-request-method')) {
        res.set('Access-Control-Allow-Methods', req.get('access-control-request-method'));
        res.set('Access-Control-Allow-Headers', req.get('access-control-request-headers') || '');
        res.end();
        return;
    }
    if (abandoned >= maxAbandoned) {
        res.set('Retry-After', String(Math.ceil(timeout)));
        res.status(503).send(`${abandoned} calls are still running past the timeout; try again later`);
        return;
    }
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    let data = body.toString('utf-8');
    if (req.is('application/json') && body.length > 0) {
        try {
            data = JSON.parse(data);
        } catch (err) {
            res.status(400).send(`The body is declared application/json but is not JSON: ${err.message}`);
            return;
        }
    }
    const event = {
        'data': data,
        'event-id': req.get('event-id'),
        'event-type': req.get('event-type'),
        'event-time': req.get('event-time'),
        'event-namespace': req.get('event-namespace'),
        'extensions': { request: req, response: res },
    };
    const method = req.method;
    calls.labels(method).inc();
    const end = duration.labels(method).startTimer();
    run(event)
        .then((result) => answer(res, result))
        .catch((err) => {
            failures.labels(method).inc();
            if (err instanceof Timeout) {
                console.error(`The function ran past its timeout of ${timeout}s.`);
                if (!res.headersSent) res.status(408).send('Timeout while processing the function');
            } else {
                console.error(`The function failed: ${err && err.stack ? err.stack : err}`);
                if (!res.headersSent) res.status(500).send('Internal Server Error');
            }
        })
        .finally(end);
});

const server = app.listen(port, process.env.FUNC_ADDR || undefined, () => {
    console.log(`Serving ${modName}.${handlerName} on port ${port} (timeout ${timeout}s).`);
});

// A stop finishes the calls in progress, then exits.
function shutdown() {
    console.log('Stopping: finishing the calls in progress.');
    server.close(() => process.exit(0));
    server.closeIdleConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
