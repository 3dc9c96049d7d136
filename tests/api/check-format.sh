#!/bin/sh
# SPDX-License-Identifier: MIT
# The tree is formatted with its .clang-format. Other clang-format versions
# lay some constructs out differently, so only the version the tree was
# formatted with (14, Debian 12's) judges; others skip (77).
cd "$1" || exit 1
want=14
cf=$(command -v clang-format) || { echo "clang-format not installed: skipped"; exit 77; }
ver=$("$cf" --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
[ "$ver" = "$want" ] || { echo "clang-format $ver, the tree follows $want: skipped"; exit 77; }
[ -d .git ] || [ -f .git ] || { echo "not a git checkout: skipped"; exit 77; }
files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh') || exit 1
# shellcheck disable=SC2086
if ! "$cf" --dry-run -Werror $files; then
    echo "format: run clang-format -i on the files above"
    exit 1
fi
echo "format: $(echo "$files" | wc -w) files follow .clang-format"
