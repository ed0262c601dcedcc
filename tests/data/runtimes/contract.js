// The runtime contract suite's function (tests/it/runtimes.rs), written as for Kubeless's Node runtime.
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = {
    handler: async (event, context) => {
        const data = event.data;
        if (typeof data !== 'object' || data === null) {
            return { text: data };
        }
        if (data.op === 'raise') {
            throw new Error('the function failed on purpose');
        }
        if (data.op === 'sleep') {
            await sleep(data.seconds * 1000);
            return 'slept';
        }
        if (data.op === 'spin') {
            // A synchronous loop: only a watchdog can stop it.
            for (;;) { /* busy */ }
        }
        if (data.op === 'barrier') {
            fs.writeFileSync(path.join(data.dir, crypto.randomUUID()), '');
            const deadline = Date.now() + data.wait * 1000;
            while (Date.now() < deadline) {
                if (fs.readdirSync(data.dir).length >= data.n) return 'met';
                await sleep(50);
            }
            return 'alone';
        }
        const req = event.extensions.request;
        return {
            'data': data,
            'event-id': event['event-id'],
            'event-type': event['event-type'],
            'event-time': event['event-time'],
            'event-namespace': event['event-namespace'],
            'context': context,
            'method': req.method,
            'path': req.path,
            'query': req.query,
        };
    },
};
