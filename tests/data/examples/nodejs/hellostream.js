// Answers through the response itself, streaming its body.
const from = require('from2');
const eos = require('end-of-stream');

function chunks(text) {
  return from((size, next) => {
    if (text.length === 0) return next(null, null);
    const chunk = text.slice(0, size);
    text = text.slice(size);
    return next(null, chunk);
  });
}

module.exports = {
  foo: (event, context) => new Promise((resolve, reject) => {
    const { response } = event.extensions;
    const stream = chunks('hello world!');
    eos(stream, (err) => (err ? reject(err) : resolve(stream)));
    response.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
    stream.pipe(response);
  }),
};
