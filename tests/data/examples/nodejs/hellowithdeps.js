'use strict';

const _ = require('lodash');

module.exports = {
  handler: (event, context) => JSON.stringify(_.assign({}, event.data, { date: new Date().toISOString(), zone: 'UTC' })),
};
