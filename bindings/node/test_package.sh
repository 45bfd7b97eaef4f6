#!/usr/bin/env bash
# What a user of the npm package gets: `npm pack` here, then `npm install <tarball>` in an
# empty project, twice:
#   1. as packed (with the addon built for this machine): the prebuilt addon is kept;
#   2. with CORTEXSTREAM_NODE_BUILD=1, as on a machine where no prebuilt fits: the install
#      script builds the addon with cargo from the Rust sources the tarball carries.
# Each time the installed package generates a few greedy tokens with SmolLM2, the same as the
# repository's addon does. No registry is contacted by npm: the package has no dependencies.
set -euo pipefail

node_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
# A fixed folder (emptied first) so a second run's cargo build finds its sources at the same
# path, with the same times (npm packs every file with one fixed mtime), and rebuilds nothing.
work="$cache/npm-package-test"
rm -rf "$work"
mkdir -p "$work"

cd "$node_dir"
npm install --no-package-lock --no-audit --no-fund >/dev/null # the addon to ship, up to date
tarball="$(npm pack --silent --pack-destination "$work" | tail -n 1)"
tar -tzf "$work/$tarball" | grep -x 'package/native/core/src/lib.rs' >/dev/null ||
    { echo "the tarball carries no Rust sources" >&2; exit 1; }
[ ! -e "$node_dir/native" ] || { echo "postpack left native/ behind" >&2; exit 1; }

# install_and_generate NAME [ENV...]: a fresh project that installs the tarball and uses it.
install_and_generate() {
    local name="$1"
    shift
    local app="$work/$name"
    mkdir -p "$app"
    cd "$app"
    echo '{"name": "app", "version": "1.0.0", "private": true}' >package.json
    env "$@" npm install --no-audit --no-fund --foreground-scripts "$work/$tarball" | tee install.log
    CORTEXSTREAM_CACHE="$cache" node --input-type=module -e "
        import { Engine } from 'cortexstream';
        const engine = new Engine({ kvCacheTokens: 1024, embeddingModel: null });
        const { tokenIds, finishReason } = await engine.generate('The quick brown fox', { temperature: 0, maxTokens: 4 });
        await engine.close();
        if (tokenIds.length !== 4 || finishReason !== 'length') throw new Error('unexpected completion');
        console.log('generated', JSON.stringify(tokenIds));
    " | tee generate.log
}

echo "== npm install <tarball>: the prebuilt addon fits"
install_and_generate prebuilt
grep -q 'using the prebuilt addon' "$work/prebuilt/install.log"

echo "== npm install <tarball>: no prebuilt fits, the install script builds it with cargo"
install_and_generate from-source CORTEXSTREAM_NODE_BUILD=1
grep -q 'building the addon with cargo' "$work/from-source/install.log"
# Both installs produce the same greedy tokens.
cmp "$work/prebuilt/generate.log" "$work/from-source/generate.log"
