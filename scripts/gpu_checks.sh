#!/usr/bin/env bash
# The GPU checks, in one call on a machine with one CUDA GPU (README "Time to quality"): the GPT-2 124M
# benchmark against nanoGPT, an FSDP2 launch (train with a sharded checkpoint, resume from it, sample the
# saved model), and the test files whose in-process runs take the GPU when there is one. Logs go to $OUT
# (default /tmp/gpu-checks).
#
#   bash scripts/gpu_checks.sh
#
# On a machine without network access, llmkit's dependencies can come as wheels in .whl/ (installed to
# /tmp/site and put first on PYTHONPATH): every one the machine lacks, transformers' own included (`kernels`:
# transformers 5.25 loads every model through it; without it every from_pretrained fails). llmkit itself runs
# from this checkout. Each part has its own time limit, so one that hangs leaves the others their time.
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, accelerate, datasets, peft, trl, kernels; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, \
'peft', peft.__version__, 'trl', trl.__version__)" 2>&1 | tee -a "$OUT/device.txt"

# 1. GPT-2 124M, bf16: llmkit (AdamW, Muon, compile) against nanoGPT's train.py --compile=True
timeout "${BENCH_SECONDS:-300}" python3 benchmarks/gpu_gpt2.py --steps 80 --warmup 20 2>&1 | tee "$OUT/gpu_gpt2.log"
cp benchmarks/results/gpu_gpt2.json "$OUT/" 2>/dev/null

# 2. FSDP2 on one process (launch, sharded checkpoints, --resume, the whole model at the end), then a sample
W=$(mktemp -d)
fsdp() {
    timeout 80 python3 -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 \
        -m llmkit.cli train configs/quickstart.yaml training.optimizer=adamw training.save_steps=30 \
        training.eval_steps=30 "training.output_dir=$W/fsdp" "data.cache_dir=$W/cache" "$@"
}
{
    fsdp training.max_steps=60 && echo "FSDP: trained; checkpoints: $(ls -d "$W"/fsdp/checkpoint-* | xargs -n1 basename)"
    ls "$W"/fsdp/checkpoint-60
    fsdp training.max_steps=90 --resume && echo "FSDP: resumed to 90"
    python3 -m llmkit.cli generate "$W/fsdp" --prompt "The list" --max-new-tokens 40 --seed 0
    python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print('FSDP metrics:', m['global_step'], \
m['eval_loss'], m['mixed_precision'])" "$W/fsdp/metrics.json"
} > "$OUT/fsdp.log" 2>&1
tail -25 "$OUT/fsdp.log"

# 3. The test files that train, generate and evaluate in-process (their subprocesses stay on the CPU)
timeout "${TEST_SECONDS:-130}" python3 -m pytest -o addopts="-ra" -p no:cacheprovider -n 12 --dist loadfile -q \
    -m "not slow" tests/test_model.py tests/test_train.py tests/test_generate.py tests/test_optim.py \
    tests/test_evaluate.py tests/test_instruct.py tests/test_preference.py tests/test_conversions.py \
    --junitxml="$OUT/junit.xml" > "$OUT/pytest.log" 2>&1
echo "pytest exit $?"
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | tail -40
