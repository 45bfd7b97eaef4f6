#!/usr/bin/env bash
# Builds the C library and lays it out the way C and C++ users link it:
#
#   target/c/lib/libcortexstream.so.X.Y.Z   the shared library (SONAME libcortexstream.so.X)
#   target/c/lib/libcortexstream.so.X       -> libcortexstream.so.X.Y.Z (what programs load)
#   target/c/lib/libcortexstream.so         -> libcortexstream.so.X (what -lcortexstream finds)
#   target/c/lib/libcortexstream.a          (also link -lpthread -ldl -lm)
#   include/cortexstream.h                  (committed; see generate-header.sh)
#
#   bindings/c/build.sh [--prefix DIR]
#
# --prefix DIR also installs it: DIR/include/cortexstream.h, DIR/lib/ as above,
# DIR/lib/pkgconfig/cortexstream.pc and DIR/lib/cmake/cortexstream/ (find_package). The last
# line printed is the library folder (target/c/lib, or DIR/lib with --prefix).
#
# X.Y.Z is the header's CS_VERSION_*; X (the major version) is the ABI, see build.rs.
# Cargo names the files after the crate's lib target (libcortexstream_c.*), which cannot be
# `cortexstream` because the core crate has that name; C users get the short name.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
lib_dir="$target_dir/c/lib"
header="$repo_root/include/cortexstream.h"

prefix=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        *) echo "usage: $0 [--prefix DIR]" >&2; exit 2 ;;
    esac
done

# header_version PART: CS_VERSION_<PART> from the header, the version C users compile against.
header_version() {
    sed -n "s/^#define CS_VERSION_$1 \([0-9][0-9]*\)$/\1/p" "$header"
}
major="$(header_version MAJOR)"
version="$major.$(header_version MINOR).$(header_version PATCH)"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "no CS_VERSION_* in $header" >&2; exit 1; }

# install_atomically SRC DEST: copy then rename, so a program running from the old file never
# sees a half-written one.
install_atomically() {
    cp "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
}

# lay_out_libraries DIR: the versioned shared library, its two links, and the archive.
lay_out_libraries() {
    mkdir -p "$1"
    install_atomically "$target_dir/release/libcortexstream_c.so" "$1/libcortexstream.so.$version"
    ln -sfn "libcortexstream.so.$version" "$1/libcortexstream.so.$major"
    ln -sfn "libcortexstream.so.$major" "$1/libcortexstream.so"
    install_atomically "$target_dir/release/libcortexstream_c.a" "$1/libcortexstream.a"
}

# fill TEMPLATE DEST: @PREFIX@, @VERSION@ and @MAJOR@ replaced.
fill() {
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" -e "s|@MAJOR@|$major|g" "$1" >"$2"
}

cargo build --release -p cortexstream-c --manifest-path "$repo_root/Cargo.toml"
soname="$(readelf -d "$target_dir/release/libcortexstream_c.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')"
if [ "$soname" != "libcortexstream.so.$major" ]; then
    echo "the library's SONAME is '$soname', the header's major version says libcortexstream.so.$major" >&2
    exit 1
fi
lay_out_libraries "$lib_dir"
if [ -z "$prefix" ]; then
    echo "$lib_dir"
    exit 0
fi

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
lay_out_libraries "$prefix/lib"
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/cortexstream"
install_atomically "$header" "$prefix/include/cortexstream.h"
fill "$repo_root/bindings/c/cortexstream.pc.in" "$prefix/lib/pkgconfig/cortexstream.pc"
for file in cortexstreamConfig.cmake cortexstreamConfigVersion.cmake; do
    fill "$repo_root/bindings/c/cmake/$file" "$prefix/lib/cmake/cortexstream/$file"
done
echo "$prefix/lib"
