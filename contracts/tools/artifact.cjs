#!/usr/bin/env node
// Writes the artifact the Python service and CLI load (services/chain/ModelLicense.json) from
// forge's build output: ABI, creation and runtime bytecode, compiler settings and the SHA-256 of
// the Solidity source. Keys sorted, two-space indent, trailing newline: the same source always
// gives the same bytes.
//   usage: artifact.cjs <forge out/ModelLicense.sol/ModelLicense.json> <src/ModelLicense.sol> <output>
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const [forgeArtifact, source, output] = process.argv.slice(2);
if (!output) {
  process.stderr.write('usage: artifact.cjs <forge artifact> <source .sol> <output .json>\n');
  process.exit(2);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

const built = JSON.parse(fs.readFileSync(forgeArtifact, 'utf8'));
const settings = built.metadata.settings;
const contractName = Object.values(settings.compilationTarget)[0];
for (const [what, code] of [['bytecode', built.bytecode], ['deployedBytecode', built.deployedBytecode]]) {
  if (!/^0x[0-9a-f]+$/.test(code.object)) throw new Error(`${what} missing or unlinked in ${forgeArtifact}`);
}
const artifact = {
  contractName,
  abi: built.abi,
  bytecode: built.bytecode.object,
  deployedBytecode: built.deployedBytecode.object,
  compiler: {
    solc: built.metadata.compiler.version.split('+')[0],
    evmVersion: settings.evmVersion,
    optimizer: settings.optimizer,
  },
  sourceSha256: crypto.createHash('sha256').update(fs.readFileSync(source)).digest('hex'),
};
fs.mkdirSync(path.dirname(path.resolve(output)), { recursive: true });
fs.writeFileSync(output, JSON.stringify(sortKeys(artifact), null, 2) + '\n');
