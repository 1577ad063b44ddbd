#!/usr/bin/env bash
# out_of_tree.sh — an operator plugin built against an installed Aqueduct, without its source tree.
#
#   out_of_tree.sh BUILD_DIR SOURCE_DIR TEST_PLUGIN_BIN BAD_MAJOR_PLUGIN
# 1. cmake --install BUILD_DIR --component dev into a temporary prefix: headers, CMake package, aq-op.
# 2. examples/custom_op copied elsewhere, configured with only that prefix (CMAKE_PREFIX_PATH) and built; the
#    compile commands must not mention SOURCE_DIR, the library must export aq_plugin_init alone and need no
#    Aqueduct library.
# 3. aq-op inspect (the installed one) prints the ABI, the op, its kernels and its sharding rule.
# 4. test_plugin's SquaredRelu cases run the out-of-tree library (forward/backward against float64 and finite
#    differences).
# 5. aq-train refuses a missing plugin, a plugin of another ABI major and a bad AQ_PLUGIN_PATH in one line each,
#    with a non-zero exit, before it opens any data.
set -euo pipefail
build=$(realpath "$1"); src=$(realpath "$2"); test_bin=$3; bad_major=$4
shift 4
mpirun=("$@")  # empty when the build has no MPI: the tensor-parallel run is skipped, with the reason
work=$(mktemp -d /tmp/aq-plugin-oot-XXXXXX)
trap 'rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/script_helpers.sh"  # fail, refuse

cmake --install "$build" --prefix "$work/prefix" --component dev > "$work/install.log" || {
  cat "$work/install.log"; fail "cmake --install failed"; }
for f in include/aqueduct/op_abi.h include/aqueduct/op_plugin.hpp bin/aq-op \
         lib/cmake/Aqueduct/AqueductConfig.cmake lib/cmake/Aqueduct/AqueductConfigVersion.cmake \
         lib/cmake/Aqueduct/AqueductTargets.cmake lib/cmake/Aqueduct/AqueductPlugin.cmake; do
  [[ -e "$work/prefix/$f" ]] || fail "the install lacks $f"
done
if ls "$work/prefix/lib" | grep -q '\.a$\|\.so'; then fail "the dev install ships libraries; plugins need none"; fi

cp -r "$src/examples/custom_op" "$work/src"
cmake -S "$work/src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > "$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "configure"; }
cmake --build "$work/build" > "$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build"; }
lib="$work/build/libmyorg_squared_relu.so"
[[ -f "$lib" ]] || fail "no $lib"
if grep -q "$src" "$work/build/compile_commands.json"; then fail "the out-of-tree build saw the source tree: $(cat "$work/build/compile_commands.json")"; fi
grep -q -- "-I$work/prefix/include\|-isystem $work/prefix/include" "$work/build/compile_commands.json" \
  || fail "the build does not use the installed headers: $(cat "$work/build/compile_commands.json")"
exported=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TtWDdBbRrVv]/ {print $3}' | grep -v '^_init$\|^_fini$' | sort)
[[ "$exported" == "aq_plugin_init" ]] || fail "the plugin exports more than aq_plugin_init: $exported"
if readelf -d "$lib" | grep NEEDED | grep -qi 'aq'; then fail "the plugin links an Aqueduct library: $(readelf -d "$lib" | grep NEEDED)"; fi

"$work/prefix/bin/aq-op" inspect "$lib" > "$work/inspect.txt"
cat "$work/inspect.txt"
for want in "plugin $lib" "  name       myorg-activations 1.0.0" "  abi        1.0 (this Aqueduct speaks 1.0)" \
            "  cuda       none (no CUDA kernels)" "  operators  1" "op myorg::squared_relu v1" \
            "  input      x: T [any] any rank" "  output     y: T [same as x] any rank" "  backward   saves x; recomputes nothing" \
            "  kernel     cpu/F32  forward, backward" "  kernel     cpu/F64  forward, backward" \
            "  sharding   elementwise: in x=S(any) | out y=S(any) | grad x=S(any)"; do
  grep -qxF -- "$want" "$work/inspect.txt" || fail "aq-op inspect lacks the line: $want"
done
"$work/prefix/bin/aq-op" list > "$work/list.txt"
grep -qxF "op aq::layernorm v1" "$work/list.txt" || fail "aq-op list lacks aq::layernorm"
# A plugin that declares CUDA kernels and the architectures it carries (tests/plugin/c_plugin.c, CUDA_ARCHS).
"$work/prefix/bin/aq-op" inspect "$(dirname "$bad_major")/libtest_cplugin_cuda_archs.so" > "$work/cuda.txt"
grep -qxF "  cuda       sm_80, sm_90 (declared by the plugin)" "$work/cuda.txt" || fail "aq-op inspect: $(cat "$work/cuda.txt")"
grep -qxF "  kernel     cuda/F32  forward, backward" "$work/cuda.txt" || fail "aq-op inspect: $(cat "$work/cuda.txt")"

# The installed aq-op checks the out-of-tree build as a plugin author would (issue 10 part 6): exit 0, no FAIL.
"$work/prefix/bin/aq-op" check --plugin "$lib" myorg::squared_relu > "$work/check.txt" 2>&1 || {
  cat "$work/check.txt"; fail "aq-op check on the out-of-tree plugin"; }
grep -qE "^summary: 1 operators, [0-9]+ ok, 0 FAIL" "$work/check.txt" || fail "aq-op check: $(cat "$work/check.txt")"

AQ_TEST_SQUARED_RELU="$lib" "$test_bin" --gtest_filter='SquaredRelu.*' > "$work/gtest.log" 2>&1 || {
  cat "$work/gtest.log"; fail "the out-of-tree plugin's kernels"; }
grep -q "PASSED.*4 tests" "$work/gtest.log" || { cat "$work/gtest.log"; fail "expected 4 SquaredRelu tests"; }

# aq-train: one line, non-zero exit, before the (missing) data is looked at.
refuse "missing plugin" "aq-train: error: plugin $work/missing.so: no such file" -- \
  "$build/bin/aq-train" --data "$work/none.bin" --plugin "$lib" --plugin "$work/missing.so"
refuse "newer ABI major" "was built for operator ABI 2.0" -- \
  "$build/bin/aq-train" --data "$work/none.bin" --plugin "$bad_major"
AQ_PLUGIN_PATH="$work/nowhere" refuse "bad AQ_PLUGIN_PATH" "AQ_PLUGIN_PATH names $work/nowhere, which does not exist" -- \
  "$build/bin/aq-train" --data "$work/none.bin"

# The operator in a model: a GPT-2 whose MLP activation is myorg::squared_relu (the spec: config.json's
# activation_function), trained from the out-of-tree .so in one process and, with MPI, tensor-parallel (tp 2, each
# rank running the operator on its columns of mlp.c_fc's output, as its elementwise sharding rule allows): the
# same losses (rel < 1e-5), falling; the save's config.json names the operator.
"$build/bin/aq-prepare" --out "$work/data" "$src/README.md" > /dev/null
cat > "$work/model.json" << 'JSON'
{"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 256, "n_positions": 64,
 "activation_function": "myorg::squared_relu"}
JSON
train=("$build/bin/aq-train" --data "$work/data/train_*.bin" --model-config "$work/model.json" --seq 64 --batch 4
  --steps 30 --lr 3e-3 --threads 1 --plugin "$lib")
"${train[@]}" --log "$work/one.jsonl" --save "$work/one" > "$work/train.txt" 2>&1 || {
  cat "$work/train.txt"; fail "training with the plugin's operator in the model"; }
grep -q "activation myorg::squared_relu" "$work/train.txt" || fail "the model line does not name the operator"
grep -q '"activation_function": "myorg::squared_relu"' "$work/one/step-00000030/config.json" ||
  fail "the save's config.json does not name the operator"
losses() { sed -n 's/.*"loss":\([0-9.e+-]*\).*/\1/p' "$1"; }
# The operator really runs: the same model with GPT-2's GELU trains to other losses.
sed 's/"myorg::squared_relu"/"gelu_new"/' "$work/model.json" > "$work/gelu.json"
"${train[@]}" --model-config "$work/gelu.json" --log "$work/gelu.jsonl" > /dev/null 2>&1 || fail "the GELU run"
[[ $(losses "$work/one.jsonl" | tail -1) != $(losses "$work/gelu.jsonl" | tail -1) ]] ||
  fail "squared_relu and GELU gave the same losses: the operator did not run"
# The slot itself is faithful: the built-in aq::gelu placed there (through its adapter and the generic call path)
# trains bit for bit like GPT-2's own fused GELU.
sed 's/"myorg::squared_relu"/"aq::gelu"/' "$work/model.json" > "$work/aqgelu.json"
"${train[@]}" --model-config "$work/aqgelu.json" --log "$work/aqgelu.jsonl" > /dev/null 2>&1 || fail "the aq::gelu run"
[[ $(losses "$work/aqgelu.jsonl") == $(losses "$work/gelu.jsonl") ]] ||
  fail "aq::gelu in the activation slot and the fused GELU gave different losses"
if ((${#mpirun[@]})); then
  "${mpirun[@]}" -np 2 "${train[@]}" --tp 2 --log "$work/tp.jsonl" > "$work/tp.txt" 2>&1 || {
    cat "$work/tp.txt"; fail "tensor-parallel training with the plugin's operator"; }
  paste <(losses "$work/one.jsonl") <(losses "$work/tp.jsonl") | awk '
    { d = $1 - $2; if (d < 0) d = -d; if (d / $1 > worst) worst = d / $1; n++; if (NR == 1) first = $1; last = $1 }
    END { printf "tp 2 vs one process: %d steps, worst loss rel. difference %.2e; loss %.4f -> %.4f\n", n, worst, first, last
          exit !(n == 30 && worst < 1e-5 && last < first - 0.5) }' || fail "tp 2 and one process disagree, or the loss did not fall"
else
  echo "skip the tensor-parallel run: this build has no MPI"
fi
refuse "model needs the plugin" "activation_function myorg::squared_relu is not a registered operator; load the plugin" -- \
  "$build/bin/aq-train" --data "$work/data/train_*.bin" --model-config "$work/model.json" --steps 1
# Operators the activation slot refuses, each in one line naming why (tests/plugin/wrong_ops.cpp).
wrong="$(dirname "$bad_major")/libtest_wrong_ops.so"
slot() {  # WHAT OPERATOR EXPECTED [MPIRUN...]: aq-train with OPERATOR as the MLP activation must refuse
  local what=$1 op=$2 want=$3
  shift 3
  sed "s/\"myorg::squared_relu\"/\"$op\"/" "$work/model.json" > "$work/slot.json"
  if (($#)); then
    set +e; "$@" "$build/bin/aq-train" --data "$work/data/train_*.bin" --model-config "$work/slot.json" --steps 1 \
      --threads 1 --plugin "$wrong" --tp 2 > "$work/out.txt" 2> "$work/err.txt"; local code=$?; set -e
    [[ $code -ne 0 ]] || fail "$what: exit code 0"
    grep -qF -- "$want" "$work/err.txt" "$work/out.txt" || fail "$what: \"$want\" not in: $(cat "$work/err.txt")"
    echo "refused ($what, exit $code): $want"
  else
    refuse "$what" "$want" -- "$build/bin/aq-train" --data "$work/data/train_*.bin" --model-config "$work/slot.json" \
      --steps 1 --plugin "$wrong"
  fi
}
slot "activation without a backward" wrong::noisy "declares no backward"
slot "activation without an F32 kernel" wrong::overwrites "has no kernel for cpu/F32; its plugin provides: cpu/F64"
slot "activation of another shape" wrong::short_shape "maps a [6, 10] input to [5, 10]"
if ((${#mpirun[@]})); then
  slot "activation that cannot split under --tp" wrong::replicated_only \
    "none of its sharding rules splits dimension 1 of its input, output and gradient (replicated (in B, out B))" \
    "${mpirun[@]}" -np 2
fi

echo "out-of-tree plugin: OK"
