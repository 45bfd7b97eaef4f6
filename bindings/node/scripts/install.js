'use strict';
// `npm install` hook: makes sure `cortexstream.node` exists and loads in this Node.
//
// - Inside the cortexstream repository (a checkout): always asks cargo, which only rebuilds
//   what changed, so the addon never lags behind the Rust sources.
// - From a packed tarball: keeps the prebuilt `cortexstream.node` it ships when it loads here;
//   otherwise (no prebuilt, another platform or libc) builds it with cargo from the Rust
//   sources the tarball carries in `native/` (see pack-sources.js).
//
// Set CORTEXSTREAM_NODE_BUILD=1 to build even when a prebuilt addon loads. The build needs
// cargo on PATH and fetches crates only from the registry cargo is configured with.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const packageDir = path.join(__dirname, '..');
const addonPath = path.join(packageDir, 'cortexstream.node');

/** The workspace to build from: the repository around us, or the sources the tarball ships. */
function workspaceDir() {
  const repo = path.join(packageDir, '..', '..');
  if (fs.existsSync(path.join(repo, 'bindings', 'node', 'Cargo.toml')) && fs.existsSync(path.join(repo, 'Cargo.toml'))) {
    return { dir: repo, inRepository: true };
  }
  const shipped = path.join(packageDir, 'native');
  if (fs.existsSync(path.join(shipped, 'Cargo.toml'))) return { dir: shipped, inRepository: false };
  return null;
}

/** Whether the addon at `addonPath` loads in this process (right platform, ABI and libc). */
function prebuiltLoads() {
  if (!fs.existsSync(addonPath)) return false;
  try {
    process.dlopen({ exports: {} }, addonPath);
    return true;
  } catch (error) {
    console.log(`cortexstream: the prebuilt addon does not load here (${error.message.split('\n')[0]}); building it`);
    return false;
  }
}

/** Builds the addon with cargo and moves it into place (rename: never a half-written file). */
function build(workspace) {
  const targetDir = process.env.CARGO_TARGET_DIR || path.join(workspace, 'target');
  execFileSync('cargo', ['build', '--release', '-p', 'cortexstream-node', '--manifest-path', path.join(workspace, 'Cargo.toml')], {
    stdio: 'inherit',
    env: { ...process.env, CARGO_TARGET_DIR: targetDir },
  });
  const built = path.join(targetDir, 'release', libraryName('cortexstream_node'));
  const temporary = path.join(packageDir, '.cortexstream.node.tmp');
  fs.copyFileSync(built, temporary);
  fs.renameSync(temporary, addonPath);
}

function libraryName(crate) {
  if (process.platform === 'win32') return `${crate}.dll`;
  if (process.platform === 'darwin') return `lib${crate}.dylib`;
  return `lib${crate}.so`;
}

function main() {
  const workspace = workspaceDir();
  const forced = process.env.CORTEXSTREAM_NODE_BUILD === '1';
  if (!workspace?.inRepository && !forced && prebuiltLoads()) {
    console.log('cortexstream: using the prebuilt addon');
    return;
  }
  if (workspace == null) {
    throw new Error('cortexstream: no prebuilt addon fits this platform and the package carries no Rust sources to build one');
  }
  console.log(`cortexstream: building the addon with cargo in ${workspace.dir}`);
  build(workspace.dir);
  if (!prebuiltLoads()) throw new Error(`cortexstream: the addon built at ${addonPath} does not load`);
}

try {
  main();
} catch (error) {
  console.error(error.message);
  process.exit(1);
}
