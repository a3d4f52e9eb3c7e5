#!/usr/bin/env bash
# Runs one fuzz target under AFL++ for a while, then merges what the campaign found into the
# target's saved corpus (fuzz/corpus/TARGET), which `cargo test` replays.
#
#   scripts/fuzz.sh TARGET [MINUTES]      (default 30; targets: see fuzz/src/lib.rs)
#
# Needs cargo-afl (`cargo install cargo-afl`; it builds AFL++ itself). Crashes stay under
# $FUZZ_OUT/TARGET/default/crashes: fix the bug, then copy the input into fuzz/corpus/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET [MINUTES]}
minutes=${2:-30}
out=${FUZZ_OUT:-$HOME/.cache/peerchat-fuzz}/$target
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/peerchat-fuzz-target}

(cd fuzz/afl && cargo afl build --release --quiet)
binary=$CARGO_TARGET_DIR/release/peerchat-fuzz-afl

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_SKIP_CRASHES=1 AFL_AUTORESUME=1
mkdir -p "$out"
cargo afl fuzz -i "fuzz/corpus/$target" -o "$out" -V $((minutes * 60)) -t 2000 \
  -- "$binary" "$target" > "$out/fuzz.log" 2>&1 || true

stats=$out/default/fuzzer_stats
execs=$(awk -F' *: *' '$1=="execs_done"{print $2}' "$stats")
crashes=$(awk -F' *: *' '$1=="saved_crashes"{print $2}' "$stats")
hangs=$(awk -F' *: *' '$1=="saved_hangs"{print $2}' "$stats")
edges=$(awk -F' *: *' '$1=="edges_found"{print $2}' "$stats")
echo "$target: ${minutes} min, $execs executions, $edges edges, $crashes crashes, $hangs hangs"

# The queue, minimized, joins the saved corpus (only inputs that add coverage are kept).
merged=$(mktemp -d)
cargo afl cmin -i "$out/default/queue" -o "$merged" -- "$binary" "$target" > /dev/null 2>&1 || true
for f in "$merged"/*; do
  [ -f "$f" ] || continue
  name=found-$(sha256sum "$f" | cut -c1-16)
  [ -e "fuzz/corpus/$target/$name" ] || cp "$f" "fuzz/corpus/$target/$name"
done
rm -rf "$merged"
