'use strict';
// `npm pack` hooks: `prepack` copies the Rust sources the addon is built from (the core crate,
// this crate, the lockfile and a two-member workspace manifest) into `native/`, so a tarball
// installed where its prebuilt addon does not fit can build one (scripts/install.js);
// `postpack` removes the copy again. Only sources: no tests, no target folder.
const fs = require('node:fs');
const path = require('node:path');

const packageDir = path.join(__dirname, '..');
const repo = path.join(packageDir, '..', '..');
const nativeDir = path.join(packageDir, 'native');

function copy(from, to) {
  fs.cpSync(path.join(repo, from), path.join(nativeDir, to), { recursive: true });
}

/** The repository's workspace manifest with only the two crates the addon needs. */
function workspaceManifest() {
  const manifest = fs.readFileSync(path.join(repo, 'Cargo.toml'), 'utf8');
  const members = /^members = \[.*\]$/m;
  if (!members.test(manifest)) throw new Error('Cargo.toml: no one-line `members = [...]` to rewrite');
  return manifest.replace(members, 'members = ["core", "bindings/node"]');
}

function prepack() {
  fs.rmSync(nativeDir, { recursive: true, force: true });
  fs.mkdirSync(nativeDir);
  fs.writeFileSync(path.join(nativeDir, 'Cargo.toml'), workspaceManifest());
  copy('Cargo.lock', 'Cargo.lock');
  copy('rustfmt.toml', 'rustfmt.toml');
  for (const item of ['Cargo.toml', 'src', 'benches']) copy(path.join('core', item), path.join('core', item));
  for (const item of ['Cargo.toml', 'build.rs', 'src']) copy(path.join('bindings', 'node', item), path.join('bindings', 'node', item));
}

function postpack() {
  fs.rmSync(nativeDir, { recursive: true, force: true });
}

const step = process.argv[2];
if (step === 'prepack') prepack();
else if (step === 'postpack') postpack();
else throw new Error(`usage: pack-sources.js prepack|postpack (got ${step})`);
