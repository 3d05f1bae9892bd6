#!/usr/bin/env bash
# Walk through the store commands on real files: snapshot a copy of Python's
# `json` and `email` packages, list it, change it and diff, materialize it
# elsewhere and compare, then check the store. Usage: scripts/demo.sh [EXPFS]
set -euo pipefail
expfs=$(realpath "${1:-.venv/bin/expfs}")
python=$(dirname "$expfs")/python

work=$(mktemp -d "${TMPDIR:-/tmp}/expfs-demo.XXXXXX")
cleanup() {
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "a Git repository in $work/repo with a copy of Python's json and email packages"
repo=$work/repo
git init -q "$repo"
cd "$repo"
stdlib=$("$python" -c 'import json, os; print(os.path.dirname(os.path.dirname(json.__file__)))')
mkdir data
cp -r "$stdlib/json" "$stdlib/email" data/
find data -name __pycache__ -prune -exec rm -rf {} +
echo "$(find data -type f | wc -l) files, $(du -sh data | cut -f1)"

step "create the store"
run "$expfs" init

step "snapshot the folder (prints the digest of its tree)"
first=$(run "$expfs" snapshot data | tee /dev/stderr | tail -n 1)

step "snapshot again: nothing changed, so the digest is the same"
again=$(run "$expfs" snapshot data | tee /dev/stderr | tail -n 1)
[ "$first" = "$again" ] || { echo "digest changed without an edit" >&2; exit 1; }

step "list the top of the snapshot and one folder inside it"
run "$expfs" ls "$first"
run "$expfs" ls "$first" json

step "change a file, add one, remove one, and diff the two snapshots"
echo "# edited by the demo" >>data/json/decoder.py
echo "notes" >data/NOTES.txt
rm data/email/charset.py
second=$(run "$expfs" snapshot data | tee /dev/stderr | tail -n 1)
run "$expfs" diff "$first" "$second"

step "materialize the new snapshot into another folder and compare it with the source"
run "$expfs" materialize "$second" "$work/copy"
run diff -r data "$work/copy"
echo "identical"

step "re-hash every object in the store"
run "$expfs" fsck

printf '\ndemo finished: every step above succeeded\n'
