#!/usr/bin/env bash
# bad_input.sh — every kind of bad input to aq-train, aq-prepare and aq-generate must end the program with a
# non-zero exit code and exactly one line "<program>: error: ..." on stderr that says what is wrong: no crash,
# no abort, no stack trace, and no checkpoint or temporary file left behind.
#
#   bash tests/cli/bad_input.sh build/bin
# Prints "ok NAME" or "FAIL NAME: reason" per case, then "N passed, M failed"; exits 1 if any case failed.
set -u

BIN=${1:?usage: bad_input.sh BUILD_BIN_DIR}
BIN=$(cd "$BIN" && pwd) || exit 1
for prog in aq-train aq-prepare aq-generate; do
  if [[ ! -x $BIN/$prog ]]; then
    echo "FAIL setup: $BIN/$prog is missing (build it first)"
    echo "0 passed, 1 failed"
    exit 1
  fi
done
export LC_ALL=C OMP_NUM_THREADS=1

TMP=$(mktemp -d /tmp/aq-cli-XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
OUT=$TMP/out  # output directory of the failing runs: must stay free of checkpoints and temporaries
passed=0
failed=0

ok() {
  echo "ok $1"
  passed=$((passed + 1))
  if [[ ${VERBOSE:-0} == 1 && -s $TMP/stderr ]]; then sed 's/^/    /' "$TMP/stderr"; fi
}
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# Files a failed run must not leave: its checkpoint, atomic-write temporaries, writability probes.
leftovers() {
  {
    find "$OUT" -mindepth 1 \( -path "$OUT/out" -o -path "$OUT/out/*" \)
    find "$TMP" \( -name '*.tmp.*' -o -name '*.probe.*' \)
  } 2>/dev/null | sort -u
}

# expect_fail NAME REGEX [EXIT_CODE] -- CMD...
# Runs CMD; it must exit non-zero (EXIT_CODE exactly, when given) with one non-empty stderr line matching REGEX.
expect_fail() {
  local name=$1 regex=$2 want_rc=""
  shift 2
  if [[ $1 != -- ]]; then
    want_rc=$1
    shift
  fi
  shift  # --
  rm -rf "$OUT" && mkdir -p "$OUT"
  "$@" >"$TMP/stdout" 2>"$TMP/stderr"
  local rc=$?
  local err lines
  err=$(cat "$TMP/stderr")
  lines=$(awk 'END { print NR }' "$TMP/stderr")
  if ((rc == 0)); then
    fail "$name" "exit code 0 (stderr: ${err:-empty})"
  elif ((rc >= 124)); then
    fail "$name" "exit code $rc: killed by a signal or timeout (stderr: ${err:-empty})"
  elif [[ -n $want_rc && $rc != "$want_rc" ]]; then
    fail "$name" "exit code $rc, expected $want_rc (stderr: $err)"
  elif grep -qiE 'terminate called|segmentation|aborted|core dumped|stack trace|backtrace|what\(\)' "$TMP/stderr"; then
    fail "$name" "crash output on stderr: $err"
  elif [[ $lines != 1 || -z ${err//[[:space:]]/} ]]; then
    fail "$name" "stderr has $lines line(s), expected exactly one: $(tr '\n' '|' <"$TMP/stderr")"
  elif ! grep -qE '^aq-[a-z]+( [a-z-]+)?: error: ' "$TMP/stderr"; then  # "aq-bench wan: error: " for a subcommand
    fail "$name" "stderr line lacks the '<program>: error: ' prefix: $err"
  elif ! grep -qE -- "$regex" "$TMP/stderr"; then
    fail "$name" "stderr does not match /$regex/: $err"
  elif [[ -n $(leftovers) ]]; then
    fail "$name" "left files behind: $(leftovers | tr '\n' ' ')"
  else
    ok "$name"
  fi
  rm -rf "$OUT"
}

# ---- fixtures ---------------------------------------------------------------------------------------------------

# ~200 KB of pseudo-English (lowercase words: byte values 97..121, so --vocab 100 rejects them).
awk 'BEGIN {
  srand(7)
  n = split("the of and to in a is that for it as was with be by on not he this are or his from at which but " \
            "have an they you were her she there one all we their lazy zebra quiz", w, " ")
  size = 0
  while (size < 200000) {
    k = 5 + int(rand() * 10); s = ""
    for (i = 0; i < k; i++) s = s (i ? " " : "") w[1 + int(rand() * n)]
    s = s ".\n"; printf "%s", s; size += length(s)
  }
}' >"$TMP/text.txt"
head -c 6000 "$TMP/text.txt" >"$TMP/small.txt"

setup_failed() {
  echo "FAIL setup: $1"
  echo "$passed passed, $((failed + 1)) failed"
  exit 1
}
"$BIN/aq-prepare" --out "$TMP/data" "$TMP/text.txt" >/dev/null 2>"$TMP/stderr" ||
  setup_failed "aq-prepare on valid text: $(cat "$TMP/stderr")"
"$BIN/aq-prepare" --out "$TMP/small" --val-fraction 0.5 "$TMP/small.txt" >/dev/null 2>"$TMP/stderr" ||
  setup_failed "aq-prepare on small text: $(cat "$TMP/stderr")"
DATA=$TMP/data/train_000.bin
[[ -f $DATA && -f $TMP/small/train_000.bin ]] || setup_failed "aq-prepare wrote no shards"

# A tiny model trained for one step, saved with its training state. TRAIN is the program with the model shape;
# RUN adds a small batch. A flag may be given once only (a repeated flag is itself a command-line error).
AQT=("$BIN/aq-train" --threads 1 --device cpu)
TRAIN=("${AQT[@]}" --layers 1 --heads 2 --dim 16)
RUN=("${TRAIN[@]}" --seq 16 --batch 2)
CKDIR=$TMP/ck
CK=$CKDIR/step-00000001/model.safetensors
"${RUN[@]}" --data "$DATA" --steps 1 --save "$CKDIR" >/dev/null 2>"$TMP/stderr" ||
  setup_failed "aq-train --steps 1 --save: $(cat "$TMP/stderr")"
[[ -f $CK && -f $CKDIR/step-00000001/state.safetensors ]] || setup_failed "aq-train --save wrote no checkpoint"

# Damaged copies of the checkpoint, written with the Python standard library only.
cat >"$TMP/edit.py" <<'EOF'
import json, struct, sys
src, dst, op = sys.argv[1:4]
arg = sys.argv[4] if len(sys.argv) > 4 else None
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
if op == "drop":        # remove one tensor from the header
    del header[arg]
elif op == "flatten":   # same bytes, wrong shape
    shape = header[arg]["shape"]
    header[arg]["shape"] = [shape[0] * shape[1]]
elif op == "int":       # same bytes, integer dtype
    header[arg]["dtype"] = "I32"
elif op == "overlap":   # tensor arg shares the bytes of the tensor before it in the data section
    tensors = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
    i = [k for _, k in tensors].index(arg)
    header[arg]["data_offsets"] = [tensors[i - 1][0][1] - 4, tensors[i][0][1] - 4]
elif op == "badlen":    # header length far beyond the end of the file
    open(dst, "wb").write(struct.pack("<Q", n + 10**9) + raw[8:])
    sys.exit(0)
elif op == "badjson":
    open(dst, "wb").write(raw[:8] + b"x" + raw[9:])
    sys.exit(0)
text = json.dumps(header, separators=(",", ":"))
text += " " * (-len(text) % 8)
open(dst, "wb").write(struct.pack("<Q", len(text)) + text.encode() + data)
EOF
HAVE_PY=1
command -v python3 >/dev/null || HAVE_PY=0
edit() { python3 "$TMP/edit.py" "$CK" "$TMP/$1" "${@:2}"; }
if ((HAVE_PY)); then
  if ! { edit missing.safetensors drop h.0.mlp.c_fc.bias && edit shape.safetensors flatten h.0.attn.c_attn.weight &&
    edit int.safetensors int h.0.ln_2.bias && edit overlap.safetensors overlap h.0.ln_1.bias &&
    edit badlen.safetensors badlen && edit badjson.safetensors badjson; }; then
    setup_failed "python3 could not write the damaged checkpoints"
  fi
fi
head -c $(($(stat -c %s "$CK") - 100)) "$CK" >"$TMP/cut.safetensors"
head -c 4096 /dev/urandom >"$TMP/random.bin"
head -c 5000 "$DATA" >"$TMP/truncated.bin"
cp "$CK" "$TMP/nostate.safetensors"
# A model file paired with the state of a different save (as after a crash between the two writes).
"${RUN[@]}" --data "$DATA" --steps 2 --save "$TMP/other" >/dev/null 2>"$TMP/stderr" ||
  setup_failed "aq-train --steps 2 --save: $(cat "$TMP/stderr")"
cp "$CK" "$TMP/mixed.safetensors"
cp "$TMP/other/step-00000002/state.safetensors" "$TMP/mixed.safetensors.state"
mkdir -p "$TMP/adir"

# ---- aq-train: command line ------------------------------------------------------------------------------------

SAVE=(--save "$OUT/out")
echo '{"model_type": "bert", "hidden_size": 8}' > "$TMP/bert.json"
if [[ -e /nonexistent_dir ]]; then
  fail nonexistent_dir "/nonexistent_dir exists on this machine, so the unwritable-path cases cannot work; remove it"
fi
expect_fail unknown_flag 'bogus.*--help' 2 -- "${RUN[@]}" --data "$DATA" --bogus "${SAVE[@]}"
expect_fail missing_data_flag '--data' 2 -- "$BIN/aq-train" --steps 1
expect_fail batch_not_a_number 'batch' 2 -- "${TRAIN[@]}" --data "$DATA" --batch abc "${SAVE[@]}"
expect_fail batch_zero '--batch must be >= 1 \(got 0\)' 1 -- "${TRAIN[@]}" --data "$DATA" --batch 0 "${SAVE[@]}"
expect_fail lr_negative '--lr must be a positive number \(got -1\)' 1 -- "${RUN[@]}" --data "$DATA" --lr -1 "${SAVE[@]}"
expect_fail lr_schedule_unknown '--lr-schedule must be constant or cosine \(got foo\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --lr-schedule foo "${SAVE[@]}"
expect_fail steps_negative '--steps must be >= 0' 1 -- "${RUN[@]}" --data "$DATA" --steps -1 "${SAVE[@]}"
expect_fail device_unknown '--device must be cpu, cuda or auto \(got tpu\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --device tpu "${SAVE[@]}"
expect_fail bench_unknown_config 'unknown --config nope \(choose ' 1 -- "$BIN/aq-bench" --config nope --threads 1
expect_fail bench_dtype_unknown '--dtype must be fp32, bf16 or auto \(got fp16\)' 1 -- \
  "$BIN/aq-bench" --config tiny --steps 1 --threads 1 --dtype fp16
if [[ $(id -u) -eq 0 ]]; then  # aq-bench wan skips (77) before any check without root
  expect_fail bench_wan_accum_unused '--grad-accum applies to sync-even and sync-auto only' 1 -- \
    "$BIN/aq-bench" wan --configs flat --grad-accum 4
  expect_fail bench_wan_balance_centres 'compare 2 centres, a fast and a slow one; use --centres 2 \(got 3\)' 1 -- \
    "$BIN/aq-bench" wan --centres 3 --configs sync-auto
  expect_fail bench_wan_outer_unused '--outer-steps and --outer-compress apply to diloco, streaming, diloco-even and diloco-auto only' 1 -- \
    "$BIN/aq-bench" wan --configs flat,alone --outer-steps 10
  expect_fail bench_wan_outer_codec '--outer-compress must be none, bf16, int8 or int4 \(got "fp4"\)' 1 -- \
    "$BIN/aq-bench" wan --configs diloco --outer-compress fp4
  expect_fail bench_wan_outer_streaming_h1 'streaming overlaps its exchange with 1 inner step, so it needs --outer-steps >= 2 \(got 1\)' 1 -- \
    "$BIN/aq-bench" wan --configs streaming --outer-steps 1
  expect_fail bench_wan_quota_bad '--cpu-quota centre5=0.5 must be centreK=CORES with K < 2' 1 -- \
    "$BIN/aq-bench" wan --configs alone --cpu-quota centre5=0.5
fi
expect_fail bench_predict_compress_unknown '--compress must be none, bf16, int8, int4 or all \(got "fp8"\)' 1 -- \
  "$BIN/aq-bench" predict --compress fp8
expect_fail bench_predict_compress_flat '--compress int4 encodes hier.s cross-centre hop, but --algo flat has none' 1 -- \
  "$BIN/aq-bench" predict --algo flat --compress int4
# A calibration file written before int4 existed (no "int4" codec entry) still loads: int4 takes int8's rates
# and the calibration's source line says so.
cat > "$TMP/old_calibration.json" << 'JSON'
{"format": "aqueduct-calibration-1", "source": "hand-written",
 "links": {"node": {"alpha_s": 1e-5, "bytes_per_s": 1e10}, "centre": {"alpha_s": 1e-5, "bytes_per_s": 1e10},
           "wan": {"alpha_s": 1e-2, "bytes_per_s": 1e7}},
 "compute_s_per_token": 1e-4,
 "codec": {"none": {"encode_bytes_per_s": 3e10, "decode_bytes_per_s": 3e10},
           "bf16": {"encode_bytes_per_s": 2e10, "decode_bytes_per_s": 2e10},
           "int8": {"encode_bytes_per_s": 4.5e9, "decode_bytes_per_s": 6e10}}}
JSON
"$BIN/aq-bench" predict --calibration "$TMP/old_calibration.json" --what-if false > "$TMP/stdout" 2> "$TMP/stderr"
rc=$?
codec_rates() { grep -E "^  codec $1 " "$TMP/stdout" | sed "s/$1/CODEC/"; }
if ((rc != 0)); then
  fail calibration_without_int4 "exit code $rc: $(head -3 "$TMP/stderr")"
elif ! grep -q "hand-written (int4's codec rates: int8's, the file predates int4)" "$TMP/stdout"; then
  fail calibration_without_int4 "the source line does not say where int4's rates came from"
elif [[ -z $(codec_rates int8) || $(codec_rates int4) != "$(codec_rates int8)" ]]; then
  fail calibration_without_int4 "int4's rates are not int8's: $(grep -E '^  codec int[48] ' "$TMP/stdout" | tr '\n' '|')"
else
  ok calibration_without_int4
fi
expect_fail bench_peak_negative '--peak-tflops must be >= 0' 1 -- "$BIN/aq-bench" --config tiny --peak-tflops -1
expect_fail bench_profile_on_gpu '--profile times CPU kernels' 1 -- \
  "$BIN/aq-bench" --config tiny --steps 1 --threads 1 --profile --device cuda
expect_fail dtype_unknown '--dtype must be fp32, bf16 or auto \(got fp16\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --dtype fp16 "${SAVE[@]}"
expect_fail dtype_bf16_on_cpu '--dtype bf16 runs on a GPU \(--device cuda\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --dtype bf16 "${SAVE[@]}"
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  expect_fail device_cuda_without_gpu 'no CUDA device is visible on host .*; use --device cpu or NAME=cpu for that centre|--device cuda: this build has no CUDA backend' 1 -- \
    "${RUN[@]}" --data "$DATA" --device cuda "${SAVE[@]}"
fi
# --centre-device (one process: one centre, named "0"; the refusals that need two centres are in
# centre_device.sh).
expect_fail centre_device_malformed '--centre-device: "0cpu" is not NAME=DEV; write e.g. --centre-device 0=cuda' 1 -- \
  "${RUN[@]}" --data "$DATA" --centre-device 0cpu "${SAVE[@]}"
expect_fail centre_device_unknown_centre '--centre-device: no centre is named "west"; this job.s centres are 0 \(' 1 -- \
  "${RUN[@]}" --data "$DATA" --centre-device west=cpu "${SAVE[@]}"
expect_fail centre_device_unknown_device '--centre-device 0=tpu: the device must be cpu or cuda \(got "tpu"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --centre-device 0=tpu "${SAVE[@]}"
expect_fail centre_device_twice '--centre-device names centre 0 twice; give each centre one device' 1 -- \
  "${RUN[@]}" --data "$DATA" --centre-device 0=cpu,0=cpu "${SAVE[@]}"
expect_fail centre_device_bf16_on_cpu '--dtype bf16 runs on GPUs, but --centre-device puts a centre on the CPU.*leave --dtype at auto' 1 -- \
  "${RUN[@]}" --data "$DATA" --centre-device 0=cpu --dtype bf16 "${SAVE[@]}"
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  expect_fail centre_device_cuda_without_gpu 'no CUDA device is visible on host .*; use --device cpu or NAME=cpu for that centre|--centre-device 0=cuda: this build has no CUDA backend' 1 -- \
    "${RUN[@]}" --data "$DATA" --centre-device 0=cuda "${SAVE[@]}"
fi
expect_fail tp_does_not_divide_world 'world size 1 is not divisible by --tp 2' 1 -- \
  "${RUN[@]}" --data "$DATA" --tp 2 "${SAVE[@]}"
expect_fail tp_zero '--tp must be >= 1 \(got 0\)' 1 -- "${RUN[@]}" --data "$DATA" --tp 0 "${SAVE[@]}"
expect_fail comm_timeout_zero '--comm-timeout must be > 0 seconds \(got 0\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --comm-timeout 0 "${SAVE[@]}"
expect_fail bucket_mb_zero '--bucket-mb must be > 0 \(got 0\)' 1 -- "${RUN[@]}" --data "$DATA" --bucket-mb 0 "${SAVE[@]}"
expect_fail zero_two '--zero must be 0 or 1 \(got 2\)' 1 -- "${RUN[@]}" --data "$DATA" --zero 2 "${SAVE[@]}"
expect_fail outer_unknown '--outer must be none or diloco \(got "localsgd"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --outer localsgd "${SAVE[@]}"
expect_fail outer_steps_zero '--outer-steps must be >= 1 inner steps between outer syncs \(got 0\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --outer diloco --outer-steps 0 "${SAVE[@]}"
expect_fail outer_momentum_one '--outer-momentum must be in \[0, 1\) \(got 1\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --outer diloco --outer-momentum 1 "${SAVE[@]}"
expect_fail outer_overlap_too_long '--outer-overlap must be in \[0, --outer-steps\) = \[0, 4\) inner steps \(got 4\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --outer diloco --outer-steps 4 --outer-overlap 4 "${SAVE[@]}"
expect_fail outer_fragments_without_diloco '--outer-fragments and --outer-overlap shape DiLoCo' 1 -- \
  "${RUN[@]}" --data "$DATA" --outer-fragments 4 "${SAVE[@]}"
expect_fail balance_bad_split '--balance must be off, auto or micro-batches per rank of each centre, each in \[1, 100000\], e.g. 3,1 \(got "3,x"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --balance 3,x "${SAVE[@]}"
expect_fail balance_split_per_centre '--balance 3,1 gives 2 centre\(s\) micro-batches per rank but the job has 1 centre' 1 -- \
  "${RUN[@]}" --data "$DATA" --balance 3,1 "${SAVE[@]}"
expect_fail balance_with_diloco '--balance must be off, auto or inner steps per window of --outer-steps 50 of each centre, each in \[1, 50\], e.g. 50,25 \(got "60"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --balance 60 --outer diloco --outer-steps 50 "${SAVE[@]}"
expect_fail balance_window_too_long '--balance paces inner steps per window of --outer-steps, which must then be <= 2\^30 \(got 2000000000\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --balance auto --outer diloco --outer-steps 2000000000 "${SAVE[@]}"
expect_fail stop_at_negative '--stop-at must be >= 0' 1 -- "${RUN[@]}" --data "$DATA" --stop-at -1 "${SAVE[@]}"
expect_fail time_limit_negative '--time-limit must be >= 0 minutes' 1 -- "${RUN[@]}" --data "$DATA" --time-limit -2 "${SAVE[@]}"
expect_fail memory_does_not_fit 'the job needs about [0-9.]+ GiB per rank \(parameters .*\) but this node offers [0-9.]+ GiB to each of its 1 rank\(s\); lower --batch' 1 -- \
  "${RUN[@]}" --data "$DATA" --layers 300000 --dim 64 --heads 4 "${SAVE[@]}"
expect_fail log_on_a_full_disk 'writing --log /dev/full failed at step [0-9]+ \(disk full' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 2 --log /dev/full "${SAVE[@]}"
expect_fail grad_accum_zero '--grad-accum must be >= 1 micro-batches per step \(got 0\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --grad-accum 0 "${SAVE[@]}"
expect_fail centres_do_not_divide_world '--centres 2 does not divide the world of 1 ranks' 1 -- \
  "${RUN[@]}" --data "$DATA" --centres 2 "${SAVE[@]}"
expect_fail centres_not_a_number '--centres must be auto or a positive number of centres \(got "two"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --centres two "${SAVE[@]}"
expect_fail dp_algo_unknown '--dp-algo must be flat, hier or auto \(got "ring"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --dp-algo ring "${SAVE[@]}"
expect_fail wan_compress_unknown '--wan-compress must be none, bf16, int8 or int4 \(got "fp8"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --wan-compress fp8 "${SAVE[@]}"
expect_fail wan_compress_one_centre '--wan-compress int8 compresses the cross-centre hop, but the job is one centre' 1 -- \
  "${RUN[@]}" --data "$DATA" --wan-compress int8 "${SAVE[@]}"
expect_fail error_feedback_without_compression '--error-feedback on keeps what compression dropped, but --wan-compress is none' 1 -- \
  "${RUN[@]}" --data "$DATA" --error-feedback on "${SAVE[@]}"
expect_fail error_feedback_unknown '--error-feedback must be on, off or auto \(got "yes"\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --error-feedback yes "${SAVE[@]}"
expect_fail heads_do_not_divide_dim 'C=130 is not divisible by the head count H=4' 1 -- \
  "${AQT[@]}" --layers 1 --data "$DATA" --dim 130 --heads 4 "${SAVE[@]}"
expect_fail vocab_too_large 'vocabulary size 70000' 1 -- "${RUN[@]}" --data "$DATA" --vocab 70000 "${SAVE[@]}"
expect_fail seq_above_max_seq '--seq 64 exceeds .*n_positions=32.*--max-seq' 1 -- \
  "${TRAIN[@]}" --data "$DATA" --seq 64 --max-seq 32 "${SAVE[@]}"
expect_fail seq_above_checkpoint_context "--seq 200 exceeds .*n_positions=128" 1 -- \
  "${TRAIN[@]}" --data "$DATA" --seq 200 --init-from "$CK" "${SAVE[@]}"
expect_fail flag_disagrees_with_checkpoint '--layers 2 disagrees with .*ck/step-00000001/model\.safetensors' 1 -- \
  "${AQT[@]}" --data "$DATA" --layers 2 --init-from "$CK" "${SAVE[@]}"
expect_fail heads_disagree_with_checkpoint '--heads 4 disagrees with .*ck/step-00000001/model\.safetensors, which records n_head=2' 1 -- \
  "${AQT[@]}" --data "$DATA" --heads 4 --init-from "$CK" "${SAVE[@]}"
expect_fail resume_and_init_from 'exclude each other' 1 -- \
  "${RUN[@]}" --data "$DATA" --resume "$CK" --init-from "$CK" "${SAVE[@]}"
expect_fail threads_negative '--threads must be >= 0' 1 -- "$BIN/aq-train" --data "$DATA" --threads -1 "${SAVE[@]}"
expect_fail save_every_without_save '--save-every 5 needs --save' 1 -- "${RUN[@]}" --data "$DATA" --save-every 5
expect_fail keep_negative '--keep must be >= 0 saves \(0 keeps every save; got -1\)' 1 -- "${RUN[@]}" --data "$DATA" --keep -1 "${SAVE[@]}"
expect_fail model_config_unknown_type 'model_type "bert" is not one Aqueduct builds' 1 -- \
  "${RUN[@]}" --data "$DATA" --model-config "$TMP/bert.json" "${SAVE[@]}"

# ---- aq-train: output paths ------------------------------------------------------------------------------------

expect_fail save_unwritable 'cannot create the checkpoint directory /nonexistent_dir/x: No such file or directory \(create its parent' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 1 --save /nonexistent_dir/x
expect_fail save_parent_is_a_file 'cannot create the checkpoint directory .*text\.txt/x: Not a directory' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 1 --save "$TMP/text.txt/x"
expect_fail save_is_a_file 'is a file, but --save takes a checkpoint directory .* use e\.g\. --save .*text\.txt\.ckpt' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 1 --save "$TMP/text.txt"
expect_fail save_single_file_layout 'looks like a file name, but --save takes a checkpoint directory .* use e\.g\. --save .*/model$' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 1 --save "$TMP/model.safetensors"
expect_fail log_unwritable 'cannot write log to /nonexistent_dir/log\.jsonl' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 1 --log /nonexistent_dir/log.jsonl "${SAVE[@]}"

# ---- aq-train: data --------------------------------------------------------------------------------------------

expect_fail shard_glob_no_match 'nothing_\*\.bin: no such file' 1 -- \
  "${RUN[@]}" --data "$TMP/nothing_*.bin" "${SAVE[@]}"
expect_fail val_glob_no_match '--val-data .*val_\*\.bin: no such file' 1 -- \
  "${RUN[@]}" --data "$DATA" --val-data "$TMP/val_*.bin" "${SAVE[@]}"
expect_fail shard_bad_magic 'random\.bin: not a token shard: magic number' 1 -- \
  "${RUN[@]}" --data "$TMP/random.bin" "${SAVE[@]}"
expect_fail shard_truncated 'truncated\.bin: truncated or damaged shard: header says [0-9]+ tokens' 1 -- \
  "${RUN[@]}" --data "$TMP/truncated.bin" "${SAVE[@]}"
expect_fail shard_token_above_vocab \
  'train_000\.bin: token 1[0-9]{2} at token index [0-9]+ \(byte offset [0-9]+\) .*vocabulary size 100' \
  1 -- "${RUN[@]}" --data "$DATA" --vocab 100 "${SAVE[@]}"
expect_fail shard_smaller_than_batch 'has 4096 tokens; one batch needs .* = 8193 .*lower --batch' 1 -- \
  "${TRAIN[@]}" --data "$TMP/small/train_000.bin" --batch 64 --seq 128 "${SAVE[@]}"
expect_fail shard_is_a_directory 'not a regular file' 1 -- "${RUN[@]}" --data "$TMP/adir" "${SAVE[@]}"

# ---- aq-train: checkpoints -------------------------------------------------------------------------------------

if ((HAVE_PY)); then
  expect_fail checkpoint_missing_tensor 'missing\.safetensors: missing tensor "h\.0\.mlp\.c_fc\.bias"' 1 -- \
    "${RUN[@]}" --data "$DATA" --init-from "$TMP/missing.safetensors" "${SAVE[@]}"
  expect_fail checkpoint_wrong_shape \
    'shape\.safetensors: tensor "h\.0\.attn\.c_attn\.weight" has shape \[768\], expected \[16, 48\]' 1 -- \
    "${RUN[@]}" --data "$DATA" --init-from "$TMP/shape.safetensors" "${SAVE[@]}"
  expect_fail checkpoint_integer_tensor 'int\.safetensors: tensor "h\.0\.ln_2\.bias" has dtype I32' 1 -- \
    "${RUN[@]}" --data "$DATA" --init-from "$TMP/int.safetensors" "${SAVE[@]}"
  expect_fail checkpoint_overlapping_offsets 'overlap\.safetensors: corrupt safetensors header: .*overlap' 1 -- \
    "${RUN[@]}" --data "$DATA" --init-from "$TMP/overlap.safetensors" "${SAVE[@]}"
  expect_fail checkpoint_bad_header_length 'badlen\.safetensors: corrupt safetensors header: header length' 1 -- \
    "${RUN[@]}" --data "$DATA" --init-from "$TMP/badlen.safetensors" "${SAVE[@]}"
  expect_fail checkpoint_bad_json 'badjson\.safetensors: corrupt safetensors header: JSON does not parse' 1 -- \
    "${RUN[@]}" --data "$DATA" --init-from "$TMP/badjson.safetensors" "${SAVE[@]}"
else
  echo "skip checkpoint_*: python3 not found"
fi
expect_fail checkpoint_truncated 'cut\.safetensors: corrupt safetensors header: .*truncated' 1 -- \
  "${RUN[@]}" --data "$DATA" --init-from "$TMP/cut.safetensors" "${SAVE[@]}"
expect_fail checkpoint_not_safetensors 'random\.bin: corrupt safetensors header' 1 -- \
  "${RUN[@]}" --data "$DATA" --init-from "$TMP/random.bin" "${SAVE[@]}"
expect_fail checkpoint_missing_file '--init-from .*absent\.safetensors: No such file or directory' 1 -- \
  "${RUN[@]}" --data "$DATA" --init-from "$TMP/absent.safetensors" "${SAVE[@]}"
expect_fail resume_without_state '--resume .*nostate\.safetensors needs its training state' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 2 --resume "$TMP/nostate.safetensors" "${SAVE[@]}"
expect_fail resume_mismatched_state 'belong to different saves \(model at step 1, state at step 2\)' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 3 --resume "$TMP/mixed.safetensors" "${SAVE[@]}"
expect_fail resume_nothing_to_do 'already at step 1 and --steps is 1' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 1 --resume "$CKDIR" "${SAVE[@]}"
mkdir -p "$TMP/emptyck/.saving-step-00000003.1"
expect_fail resume_no_save 'holds no checkpoint \(no step-\* saves, no manifest\.json, no model\.safetensors\); 1 save\(s\) there were interrupted .*start the run afresh' 1 -- \
  "${RUN[@]}" --data "$DATA" --steps 2 --resume "$TMP/emptyck" "${SAVE[@]}"
rm -rf "$TMP/emptyck"

# ---- aq-train: divergence ----------------------------------------------------------------------------------------

expect_fail nonfinite_loss '(loss is (nan|-nan|inf|-inf)|gradient norm is [^ ]+) at step [0-9]+' 1 -- \
  "${RUN[@]}" --data "$DATA" --lr 1e30 --grad-clip 0 --steps 5 "${SAVE[@]}"

# ---- aq-prepare and aq-generate --------------------------------------------------------------------------------

expect_fail prepare_missing_input 'cannot read input file .*absent\.txt' 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" "$TMP/absent.txt"
expect_fail prepare_unwritable_out 'cannot create --out directory .*text\.txt/data' 1 -- \
  "$BIN/aq-prepare" --out "$TMP/text.txt/data" "$TMP/text.txt"
expect_fail prepare_bad_val_fraction '--val-fraction must be in \(0, 1\)' 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" --val-fraction 1.5 "$TMP/text.txt"
# Tokenizers (no vocabulary needed: every case fails before one would be read).
mkdir -p "$TMP/badvocab" && echo '{"a": ' >"$TMP/badvocab/encoder.json" && echo '#version: 0.2' >"$TMP/badvocab/vocab.bpe"
echo '{"model": {"type": "WordPiece", "vocab": {}}}' >"$TMP/wordpiece.json"
echo '{"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}}' >"$TMP/spm.json"
expect_fail prepare_gpt2_without_vocab '--tokenizer gpt2 needs --vocab DIR' 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" --tokenizer gpt2 "$TMP/text.txt"
expect_fail prepare_gpt2_missing_vocab 'cannot read GPT-2 vocabulary .*absent/encoder\.json .*fetch_gpt2_vocab\.sh' 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" --tokenizer gpt2 --vocab "$TMP/absent" "$TMP/text.txt"
expect_fail prepare_gpt2_corrupt_vocab 'encoder\.json: not valid JSON' 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" --tokenizer gpt2 --vocab "$TMP/badvocab" "$TMP/text.txt"
expect_fail prepare_unknown_tokenizer '--tokenizer must be bytes, gpt2 or a Hugging Face tokenizer\.json' 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" --tokenizer sentencepiece "$TMP/text.txt"
expect_fail prepare_wordpiece_json "the tokenizer's model is WordPiece; only byte-level BPE" 1 -- \
  "$BIN/aq-prepare" --out "$OUT/data" --tokenizer "$TMP/wordpiece.json" "$TMP/text.txt"
expect_fail generate_metaspace_json "pre-tokenizer is Metaspace" 1 -- \
  "$BIN/aq-generate" --model "$CK" --tokenizer "$TMP/spm.json" --threads 1
expect_fail generate_missing_model '--model .*absent\.safetensors: No such file or directory' 1 -- \
  "$BIN/aq-generate" --model "$TMP/absent.safetensors" --threads 1
expect_fail generate_truncated_model 'cut\.safetensors: corrupt safetensors header' 1 -- \
  "$BIN/aq-generate" --model "$TMP/cut.safetensors" --threads 1
expect_fail generate_bad_tokens '--tokens must be >= 1' 1 -- "$BIN/aq-generate" --model "$CK" --tokens 0 --threads 1

# ---- positive controls ---------------------------------------------------------------------------------------------

rm -rf "$OUT" && mkdir -p "$OUT"
if "${RUN[@]}" --data "$DATA" --val-data "$TMP/data/val_000.bin" --eval-batches 1 --steps 2 \
  --save "$OUT/out" --log "$OUT/log.jsonl" >"$TMP/stdout" 2>"$TMP/stderr"; then
  if [[ -s $TMP/stderr ]]; then
    fail valid_run "exit 0 but stderr is not empty: $(cat "$TMP/stderr")"
  elif [[ ! -f $OUT/out/step-00000002/model.safetensors || ! -f $OUT/out/step-00000002/state.safetensors ||
    ! -f $OUT/out/step-00000002/manifest.json || ! -s $OUT/log.jsonl ]]; then
    fail valid_run "exit 0 but the checkpoint, its state or the log is missing"
  elif [[ -n $(find "$TMP" \( -name '*.tmp.*' -o -name '*.probe.*' -o -name '.saving-*' -o -name '.lock' \)) ]]; then
    fail valid_run "temporary files left behind"
  else
    ok valid_run
  fi
else
  fail valid_run "exit code $? (stderr: $(cat "$TMP/stderr"))"
fi
if "$BIN/aq-generate" --model "$CK" --tokens 5 --threads 1 >"$TMP/stdout" 2>"$TMP/stderr" &&
  [[ ! -s $TMP/stderr ]]; then
  ok valid_generate
else
  fail valid_generate "stderr: $(cat "$TMP/stderr")"
fi
rm -rf "$OUT"

echo "$passed passed, $failed failed"
((failed == 0))
