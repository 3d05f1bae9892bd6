#!/usr/bin/env bash
# The main job on real input. Copy examples/digits (scikit-learn's bundled
# digits, four DVC-format stages) into a fresh Git repository and run a sweep
# of six experiments, two at a time in FUSE mounts. Run the same sweep again,
# so every stage is restored from the run-cache. Then show the table, promote
# the most accurate experiment to the branch exp/best and compare the two
# sweeps' times. Usage: scripts/demo.sh [EXPFS]
#
# EXPFS is the expfs program of a virtual environment that also has
# scikit-learn (`make demo` installs both). Set EXPFS_DEMO_KEEP=1 to keep the
# temporary repository for a look afterwards.
set -euo pipefail
expfs=$(realpath "${1:-.venv/bin/expfs}")
venv_bin=$(dirname "$expfs")
python=$venv_bin/python
example=$(realpath "$(dirname "$0")/../examples/digits")
# The stages run `python3`, which must be the environment that has scikit-learn.
export PATH=$venv_bin:$PATH
sweep=(-S train.C=0.1,1,10 -S featurize.pca=0,32)

work=$(mktemp -d "${TMPDIR:-/tmp}/expfs-demo.XXXXXX")
repo=$work/repo
cleanup() {
  local status=$? target
  # A sweep stopped half-way can leave workspaces mounted below the repository.
  # grep exits 1 when nothing is mounted, which must not fail the script.
  findmnt -rn -o TARGET | { grep -F "$work/" || true; } | while read -r target; do
    fusermount3 -uz "$target" || true
  done
  if [ "${EXPFS_DEMO_KEEP:-0}" = 1 ]; then
    echo "kept $repo"
  else
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
now() { date +%s.%N; }

# Run one sweep named $1, print its progress lines as they come (the stages'
# own output is left out) and keep its whole output in $work/$1.log. Sets
# `elapsed_s` to the sweep's wall-clock time.
run_sweep() {
  local name=$1 log=$work/$1.log start
  local progress="^\[[^]]+\] (stage '|started|success|failed|stopped)|: (success|failed)"
  printf '$ expfs exp run %s --name %s -j 2\n' "${sweep[*]}" "$name"
  start=$(now)
  if ! "$expfs" exp run "${sweep[@]}" --name "$name" -j 2 2>&1 | tee "$log" |
    { grep --line-buffered -E "$progress" || true; }; then
    tail -n 40 "$log" >&2
    echo "the sweep $name failed: the last lines of its output are above" >&2
    exit 1
  fi
  elapsed_s=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
}

# Print how many stages of sweep $1 ran, were restored or were skipped, and
# its time in seconds, $2.
count_stages() {
  local log=$work/$1.log ran restored skipped
  ran=$(grep -cE "^\[[^]]+\] stage '[^']+': ran" "$log" || true)
  restored=$(grep -cE "^\[[^]]+\] stage '[^']+': restored" "$log" || true)
  skipped=$(grep -cE "^\[[^]]+\] stage '[^']+': skipped" "$log" || true)
  echo "sweep $1: $ran stages ran, $restored restored from the run-cache," \
    "$skipped skipped as up to date, in $2 s"
}

demo_start=$(now)

step "a fresh Git repository in $repo holding examples/digits"
git init -q -b main "$repo"
cp -r "$example/." "$repo/"
# Leave out what an earlier `expfs repro` in examples/digits may have made.
rm -rf "$repo"/{.expfs,data,model,metrics,expfs.lock}
cd "$repo"
git config user.email >/dev/null || git config user.email demo@example.invalid
git config user.name >/dev/null || git config user.name "expfs demo"
git add -A
git commit -qm "Add the digits pipeline"
run git ls-files
run cat params.yaml

step "create the store"
run "$expfs" init

step "sweep: 3 values of train.C x 2 of featurize.pca = 6 experiments, 2 at a time"
run_sweep first
first_s=$elapsed_s

step "the same sweep again: every stage should come from the run-cache"
run_sweep again
again_s=$elapsed_s

step "stage outcomes, from the [name] stage lines of each sweep"
count_stages first "$first_s"
count_stages again "$again_s"
if grep -E "^\[[^]]+\] stage '[^']+': ran" "$work/again.log" >&2; then
  echo "the stages above ran in the second sweep instead of being restored" >&2
  exit 1
fi

step "compare the experiments"
run "$expfs" exp show --sort-by accuracy --sort-order desc

step "promote the most accurate experiment to the branch exp/best"
"$expfs" exp show --json >"$work/show.json"
best=$("$python" - "$work/show.json" <<'PY'
import json
import sys

rows = json.load(open(sys.argv[1]))


def scores(row):
    return row.get("metrics", {}).get("metrics/scores.json", {})


done = [r for r in rows if r["status"] == "success" and "accuracy" in scores(r)]
if not done:
    sys.exit("exp show --json lists no successful experiment with an accuracy")
best = max(done, key=lambda r: (scores(r)["accuracy"], scores(r).get("f1", 0)))
print(best["name"])
PY
)
echo "best by accuracy: $best"
run "$expfs" exp promote "$best" --branch exp/best
run git --no-pager log --stat -1 exp/best

step "restore against running"
"$python" - "$first_s" "$again_s" <<'PY'
import sys

first_s, again_s = map(float, sys.argv[1:])
print(f"first sweep (stages ran or restored as they came): {first_s:.2f} s")
print(f"second sweep (every stage restored):               {again_s:.2f} s")
print(f"ratio second / first: {again_s / first_s:.3f}")
PY

total_s=$(awk -v a="$demo_start" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')
printf '\ndemo finished in %s s: every step above succeeded\n' "$total_s"
