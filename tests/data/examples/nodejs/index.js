const get = require('./helloget');

module.exports = {
  helloGet: get.foo,
};
