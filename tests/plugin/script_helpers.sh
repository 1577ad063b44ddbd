# script_helpers.sh — sourced by the plugin test scripts (out_of_tree.sh, model_slots.sh) after they set $work.
fail() { echo "FAIL: $*" >&2; exit 1; }
# refuse WHAT EXPECTED_SUBSTRING -- command...: the command must exit non-zero with exactly one line on stderr
# that contains EXPECTED_SUBSTRING.
refuse() {
  local what=$1 want=$2; shift 3
  set +e; "$@" > "$work/out.txt" 2> "$work/err.txt"; local code=$?; set -e
  [[ $code -ne 0 ]] || fail "$what: exit code 0"
  [[ $(wc -l < "$work/err.txt") -eq 1 ]] || fail "$what: not one line: $(cat "$work/err.txt")"
  grep -qF -- "$want" "$work/err.txt" || fail "$what: \"$want\" not in: $(cat "$work/err.txt")"
  echo "refused ($what, exit $code): $(cat "$work/err.txt")"
}
