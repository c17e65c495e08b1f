#!/usr/bin/env bash
# Print the directory `cargo build --release` puts its binaries in. Builds name the host
# target explicitly (.cargo/config.toml), so that is target/<host tuple>/release, under
# CARGO_TARGET_DIR when it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CARGO_TARGET_DIR:-target}
[[ $dir == /* ]] || dir=$PWD/$dir
echo "$dir/$(rustc -vV | sed -n 's/^host: //p')/release"
