# one_error.sh — sourced by the aq-train CLI test scripts (trace.sh, centre_device.sh), which define ok and bad.
# one_error NAME REGEX RC: the command just run (exit code RC, stderr in $TMP/stderr) was refused as a bad
# invocation must be: a non-zero exit that is not a timeout, and exactly one "aq-train: error" line, matching
# REGEX. Reports a failure through bad and returns 1; returns 0 (reporting nothing) when it holds.
one_error() {
  local name=$1 re=$2 rc=$3 lines
  lines=$(grep -c "aq-train: error" "$TMP/stderr")
  if ((rc == 0 || rc >= 124)); then
    bad "$name" "exit code $rc"
  elif [[ $lines -ne 1 ]] || ! grep -Eq "$re" "$TMP/stderr"; then
    bad "$name" "expected one line matching /$re/, got: $(head -5 "$TMP/stderr")"
  else
    return 0
  fi
  return 1
}
