#!/usr/bin/env node
// Evaluates a boolean flag of a flagd document with the JavaScript flagd evaluator
// (@openfeature/flagd-core), for targeting keys <prefix>0 .. <prefix><keys-1>.
//
//   node flagd_eval.cjs DOCUMENT FLAG KEYS [PREFIX]
//
// The evaluator is loaded from $SLUICE_FLAGD_CORE_JS (a node_modules directory, as
// scripts/install-flagd-core-js.sh makes it). Prints {"version", "variants": [...]}, one
// variant per key (null for an evaluation error); exit status 1 on any error.
'use strict';
const fs = require('fs');
const path = require('path');

const [document, flag, keys, prefix = 'user-'] = process.argv.slice(2);
const modules = process.env.SLUICE_FLAGD_CORE_JS;
if (!document || !flag || !keys || !modules) {
  console.error('usage: SLUICE_FLAGD_CORE_JS=<node_modules> node flagd_eval.cjs DOCUMENT FLAG KEYS [PREFIX]');
  process.exit(2);
}
const { FlagdCore } = require(path.join(modules, '@openfeature/flagd-core'));
const version = require(path.join(modules, '@openfeature/flagd-core/package.json')).version;
const core = new FlagdCore();
core.setConfigurations(fs.readFileSync(document, 'utf8'));
const variants = [];
let errors = 0;
for (let i = 0; i < Number(keys); i++) {
  const details = core.resolveBooleanEvaluation(flag, false, { targetingKey: `${prefix}${i}` });
  if (details.errorCode) {
    errors++;
    variants.push(null);
  } else {
    variants.push(details.variant ?? null);
  }
}
process.stdout.write(JSON.stringify({ version, variants }) + '\n');
process.exitCode = errors === 0 ? 0 : 1;
