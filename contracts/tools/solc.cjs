#!/usr/bin/env node
// solc for forge on machines where forge cannot download a native compiler: answers the two
// calls forge makes (`--version` and `--standard-json`) with npm `solc` (solcjs). Point
// `solc = "tools/solc.cjs"` at it in foundry.toml.
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const args = process.argv.slice(2);

if (args.includes('--version')) {
  // The format of the native binary; forge reads the version from the last line.
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
  process.exit(0);
}

if (!args.includes('--standard-json')) {
  process.stderr.write('solc.cjs: only --version and --standard-json are supported\n');
  process.exit(2);
}

// forge puts every source's content into the input; the callback is a fallback for an import
// it left out, restricted to --base-path / --allow-paths / --include-path roots.
function optionValues(name) {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name && i + 1 < args.length) out.push(...args[i + 1].split(','));
    else if (args[i].startsWith(`${name}=`)) out.push(...args[i].slice(name.length + 1).split(','));
  }
  return out;
}
const basePath = optionValues('--base-path')[0] || process.cwd();
const roots = [basePath, ...optionValues('--allow-paths'), ...optionValues('--include-path')]
  .map((p) => path.resolve(basePath, p));

function findImports(importPath) {
  for (const root of [basePath, ...optionValues('--include-path')]) {
    const file = path.resolve(path.resolve(basePath, root), importPath);
    if (!roots.some((r) => file === r || file.startsWith(r + path.sep))) continue;
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, 'utf8') };
  }
  return { error: `File not found: ${importPath}` };
}

const input = fs.readFileSync(0, 'utf8');
process.stdout.write(solc.compile(input, { import: findImports }));
