#!/usr/bin/env bash
# model_slots.sh — the model's slots filled by plugin operators, through aq-train: the norm slot (config.json's
# "norm_op", both families) and a Llama's MLP activation (hidden_act: op(gate) ⊙ up).
#
#   model_slots.sh BIN_DIR NORM_PLUGIN ACTIVATION_PLUGIN WRONG_PLUGIN SOURCE_DIR [MPIRUN...]
# 0. aq-op check passes the operator (its backward against finite differences).
# 1. A GPT-2 whose norms are test::rms_norm (tests/plugin/norm_ops.cpp: no bias, so no ln_*.bias tensors) trains in
#    one process: the loss falls, the model line and the save's config.json name the operator, and the losses
#    differ from GPT-2's own LayerNorm (the operator really runs).
# 2. With MPI, the same run tensor-parallel (tp 2; the norms replicated on both ranks): the same losses
#    (rel < 1e-5). Likewise a Llama with the operator.
# 3. Without --plugin, the save (and the config) is refused in one line naming the plugin to load.
# 4. Every operator that breaks the slot's contract is refused in one line with a non-zero exit: one input, a
#    gradient written instead of added, an attribute other than eps, no fp32 kernel, and under --tp 2 sharding
#    rules none of which runs replicated.
# 5. A Llama whose hidden_act is myorg::squared_relu (examples/custom_op) trains in one process and at tp 2 (each
#    rank runs it on its gate columns) to the same losses, and to other losses than SwiGLU; the save names it; an
#    operator without backward, and one that cannot split its columns under --tp 2, are refused in one line.
set -euo pipefail
bin=$(realpath "$1"); lib=$(realpath "$2"); act_lib=$(realpath "$3"); wrong=$(realpath "$4"); src=$(realpath "$5")
shift 5
mpirun=("$@")  # empty when the build has no MPI: the tensor-parallel runs are skipped, with the reason
work=$(mktemp -d /tmp/aq-norm-slot-XXXXXX)
trap 'rm -rf "$work"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/script_helpers.sh"  # fail, refuse
losses() { sed -n 's/.*"loss":\([0-9.e+-]*\).*/\1/p' "$1"; }
# same_losses A.jsonl B.jsonl WHAT: the same number of steps, relative differences < 1e-5, the loss falling
same_losses() {
  paste <(losses "$1") <(losses "$2") | awk -v what="$3" '
    { d = $1 - $2; if (d < 0) d = -d; if (d / $1 > worst) worst = d / $1; n++; if (NR == 1) first = $1; last = $1 }
    END { printf "%s: %d steps, worst loss rel. difference %.2e; loss %.4f -> %.4f\n", what, n, worst, first, last
          exit !(n == 20 && worst < 1e-5 && last < first - 0.3) }' || fail "$3: the runs disagree, or the loss did not fall"
}

# The operator itself first: its backward against finite differences, its rules (aq-op check, exit 0, no FAIL).
"$bin/aq-op" check --plugin "$lib" test::rms_norm > "$work/check.txt" 2>&1 || { cat "$work/check.txt"; fail "aq-op check"; }
grep -qE "^summary: 1 operators, [0-9]+ ok, 0 FAIL" "$work/check.txt" || fail "aq-op check: $(cat "$work/check.txt")"

"$bin/aq-prepare" --out "$work/data" "$src/README.md" > /dev/null
cat > "$work/gpt2.json" << 'JSON'
{"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 256, "n_positions": 64,
 "norm_op": "test::rms_norm"}
JSON
cat > "$work/llama.json" << 'JSON'
{"model_type": "llama", "hidden_size": 64, "intermediate_size": 90, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64,
 "norm_op": "test::rms_norm"}
JSON
train=("$bin/aq-train" --data "$work/data/train_*.bin" --seq 64 --batch 4 --steps 20 --lr 3e-3 --threads 1)

"${train[@]}" --model-config "$work/gpt2.json" --plugin "$lib" --log "$work/one.jsonl" --save "$work/one" \
  > "$work/train.txt" 2>&1 || { cat "$work/train.txt"; fail "training a GPT-2 with the plugin's norm"; }
grep -q "norm test::rms_norm" "$work/train.txt" || fail "the model line does not name the norm: $(cat "$work/train.txt")"
save="$work/one/step-00000020"
grep -q '"norm_op": "test::rms_norm"' "$save/config.json" || fail "the save's config.json lacks the norm: $(cat "$save/config.json")"
header=$(head -c 65536 "$save/model.safetensors" | tr -d '\0')
grep -q '"h.1.ln_2.weight"' <<< "$header" || fail "the save has no h.1.ln_2.weight"
if grep -q 'ln_[12f]\.bias' <<< "$header"; then fail "the save has norm biases, but test::rms_norm takes none"; fi
sed '/norm_op/d; s/64,$/64}/' "$work/gpt2.json" > "$work/layernorm.json"
"${train[@]}" --model-config "$work/layernorm.json" --log "$work/layernorm.jsonl" > /dev/null 2>&1 || fail "the LayerNorm run"
[[ $(losses "$work/one.jsonl" | tail -1) != $(losses "$work/layernorm.jsonl" | tail -1) ]] ||
  fail "test::rms_norm and LayerNorm gave the same losses: the operator did not run"
"${train[@]}" --model-config "$work/llama.json" --plugin "$lib" --log "$work/llama.jsonl" > "$work/llama.txt" 2>&1 ||
  { cat "$work/llama.txt"; fail "training a Llama with the plugin's norm"; }
if ((${#mpirun[@]})); then
  "${mpirun[@]}" -np 2 "${train[@]}" --model-config "$work/gpt2.json" --plugin "$lib" --tp 2 --log "$work/tp.jsonl" \
    > "$work/tp.txt" 2>&1 || { cat "$work/tp.txt"; fail "tensor-parallel GPT-2 with the plugin's norm"; }
  same_losses "$work/one.jsonl" "$work/tp.jsonl" "GPT-2, test::rms_norm, tp 2 vs one process"
  "${mpirun[@]}" -np 2 "${train[@]}" --model-config "$work/llama.json" --plugin "$lib" --tp 2 \
    --log "$work/llama_tp.jsonl" > "$work/tp.txt" 2>&1 || { cat "$work/tp.txt"; fail "tensor-parallel Llama"; }
  same_losses "$work/llama.jsonl" "$work/llama_tp.jsonl" "Llama, test::rms_norm, tp 2 vs one process"
else
  echo "skip the tensor-parallel runs: this build has no MPI"
fi

refuse "a save whose norm needs the plugin" "norm_op test::rms_norm is not a registered operator; load the plugin" -- \
  "$bin/aq-train" --data "$work/data/train_*.bin" --init-from "$save/model.safetensors" --steps 1
refuse "a config whose norm needs the plugin" "norm_op test::rms_norm is not a registered operator; load the plugin" -- \
  "$bin/aq-train" --data "$work/data/train_*.bin" --model-config "$work/gpt2.json" --steps 1

slot() {  # WHAT OPERATOR EXPECTED [MPIRUN...]: aq-train with OPERATOR as the norm must refuse
  local what=$1 op=$2 want=$3
  shift 3
  sed "s/\"test::rms_norm\"/\"$op\"/" "$work/gpt2.json" > "$work/slot.json"
  if (($#)); then
    set +e; "$@" "${train[@]}" --model-config "$work/slot.json" --steps 1 --plugin "$lib" --tp 2 \
      > "$work/out.txt" 2> "$work/err.txt"; local code=$?; set -e
    [[ $code -ne 0 ]] || fail "$what: exit code 0"
    grep -qF -- "$want" "$work/err.txt" "$work/out.txt" || fail "$what: \"$want\" not in: $(cat "$work/err.txt")"
    echo "refused ($what, exit $code): $want"
  else
    refuse "$what" "$want" -- "${train[@]}" --model-config "$work/slot.json" --steps 1 --plugin "$lib"
  fi
}
slot "a norm of one input" test::unit_norm \
  "norm_op test::unit_norm has 1 inputs and 1 outputs; the norm slot takes inp [N,C], w [C] and optionally b [C]"
slot "a norm that overwrites its gradients" test::rms_norm_writes \
  "norm_op test::rms_norm_writes overwrites the gradient of its input \"x\"; the norm slot adds it"
slot "a norm with an unknown attribute" test::rms_norm_alpha \
  "norm_op test::rms_norm_alpha declares the attribute(s) alpha; the norm slot passes at most one, a float named eps"
slot "a norm without an fp32 kernel" test::rms_norm_f64 \
  "norm_op test::rms_norm_f64 has no kernel for cpu/F32; its plugin provides: cpu/F64"
if ((${#mpirun[@]})); then
  slot "a norm that cannot run replicated under --tp" test::rms_norm_rows \
    "norm_op test::rms_norm_rows runs replicated on every rank (norms are not split), but none of its sharding rules (rows)" \
    "${mpirun[@]}" -np 2
fi

# ---- a Llama's MLP activation ------------------------------------------------------------------------------
sed 's/"norm_op": "test::rms_norm"/"hidden_act": "myorg::squared_relu"/' "$work/llama.json" > "$work/llama_act.json"
sed '/norm_op/d; s/64,$/64}/' "$work/llama.json" > "$work/llama_silu.json"
"${train[@]}" --model-config "$work/llama_act.json" --plugin "$act_lib" --log "$work/act.jsonl" --save "$work/act" \
  > "$work/act.txt" 2>&1 || { cat "$work/act.txt"; fail "training a Llama with the plugin's activation"; }
grep -q "activation myorg::squared_relu" "$work/act.txt" || fail "the model line does not name the activation"
grep -q '"hidden_act": "myorg::squared_relu"' "$work/act/step-00000020/config.json" ||
  fail "the save's config.json does not name the activation: $(cat "$work/act/step-00000020/config.json")"
"${train[@]}" --model-config "$work/llama_silu.json" --log "$work/silu.jsonl" > /dev/null 2>&1 || fail "the SwiGLU run"
[[ $(losses "$work/act.jsonl" | tail -1) != $(losses "$work/silu.jsonl" | tail -1) ]] ||
  fail "squared_relu and silu gave the same losses: the operator did not run"
if ((${#mpirun[@]})); then
  "${mpirun[@]}" -np 2 "${train[@]}" --model-config "$work/llama_act.json" --plugin "$act_lib" --tp 2 \
    --log "$work/act_tp.jsonl" > "$work/tp.txt" 2>&1 || { cat "$work/tp.txt"; fail "tensor-parallel Llama activation"; }
  same_losses "$work/act.jsonl" "$work/act_tp.jsonl" "Llama, hidden_act myorg::squared_relu, tp 2 vs one process"
fi
refuse "a Llama activation that needs the plugin" "hidden_act myorg::squared_relu is not a registered operator" -- \
  "$bin/aq-train" --data "$work/data/train_*.bin" --model-config "$work/llama_act.json" --steps 1
sed 's/myorg::squared_relu/wrong::noisy/' "$work/llama_act.json" > "$work/slot.json"
refuse "a Llama activation without backward" "hidden_act wrong::noisy declares no backward" -- \
  "${train[@]}" --model-config "$work/slot.json" --steps 1 --plugin "$wrong"
if ((${#mpirun[@]})); then
  sed 's/myorg::squared_relu/wrong::replicated_only/' "$work/llama_act.json" > "$work/slot.json"
  set +e; "${mpirun[@]}" -np 2 "${train[@]}" --model-config "$work/slot.json" --steps 1 --plugin "$wrong" --tp 2 \
    > "$work/out.txt" 2> "$work/err.txt"; code=$?; set -e
  [[ $code -ne 0 ]] || fail "a replicated-only Llama activation under --tp 2: exit code 0"
  want="--tp 2: hidden_act wrong::replicated_only would run on this rank's columns"
  grep -qF -- "$want" "$work/err.txt" "$work/out.txt" || fail "\"$want\" not in: $(cat "$work/err.txt")"
  echo "refused (a replicated-only Llama activation under --tp 2, exit $code): $want"
fi
echo "model slots: OK"
