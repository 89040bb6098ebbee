# Sourced by the pending_h200_* scripts: the environment, a gate that exits 3 at once on any GPU but an H200 (the
# targets they check are H200 figures, and a call the tool serves with an H100 then costs only its start), the output
# folder $R and the GPU's clocks in $R/gpu.txt. ANY_GPU=1 lets another GPU through (its figures judge no H200 target).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader)
[ "${ANY_GPU:-}" = 1 ] || case "$gpu" in *H200*) ;; *) echo "not an H200: $gpu (ANY_GPU=1 runs it anyway)"; exit 3;; esac
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
