#!/usr/bin/env bash
# Run pytest with a fresh temporary base, then make sure no FUSE mount was
# left under it. Usage: scripts/run-pytest.sh PYTHON [PYTEST_ARGS...]
#
# Each run gets its own base, so two runs in one work tree do not clear
# each other's files. Tests mount only below their tmp_path, so any mount
# left under the base is a test that did not clean up: it is unmounted
# lazily and the run fails even when pytest passed.
set -uo pipefail
python=$1
shift

base=$(mktemp -d "${TMPDIR:-/tmp}/expfs-pytest.XXXXXX")
export EXPFS_TEST_BASE=$base

"$python" -m pytest --basetemp="$base/t" "$@"
status=$?
# Exit status 5 means pytest collected no tests; that is a failure here too.
[ "$status" -eq 5 ] && echo "pytest collected no tests" >&2

leftovers() {
  # /proc/mounts escapes spaces in mount points as \040.
  awk -v base="$base" '{ gsub(/\\040/, " ", $2); if (index($2, base "/") == 1) print $2 }' /proc/mounts
}
mounts=$(leftovers)
if [ -n "$mounts" ]; then
  echo "FUSE mounts left behind by the tests (now unmounted):" >&2
  while IFS= read -r mnt; do
    echo "  $mnt" >&2
    fusermount3 -uz "$mnt" || umount -l "$mnt" || true
  done <<<"$mounts"
  [ "$status" -eq 0 ] && status=1
fi

if [ -z "$(leftovers)" ]; then
  chmod -R u+w "$base" 2>/dev/null
  rm -rf "$base"
fi
exit "$status"
