#!/usr/bin/env bash
# One-shot measurement of adseg on a lent GPU machine (one NVIDIA GPU, 16 CPU cores, Python 3.12 with
# torch, numpy, scipy, matplotlib, pyyaml, tqdm and psutil; no network, no MLflow). From the repository
# root, with .gpu/site.tar.xz (../shared/tools/gpu-kit.sh) and .gpu/extra/*.whl beside it (the kit lacks
# wrapt, tabulate and attrs, which Snakemake needs; fetch their Python 3.12 wheels with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform any -d .gpu/extra wrapt tabulate attrs
# and carry .gpu along with the checkout):
#
#   OUT=/some/folder bash bench/gpu.sh        # results in $OUT (default ./gpu-out), under ~520 s in all
#   ADSEG_GPU_DRY=1 bash bench/gpu.sh         # the same stages on this CPU at tiny sizes: tests this script
#
# Stages, most important first, each under its own `timeout` (a stage that hangs or fails does not stop
# the next; $OUT/stages.tsv has each one's exit status and seconds):
#   env  machine, nvidia-smi -q and --query-gpu, torch/CUDA versions, import and CUDA start-up times
#   A    bench/run.py --device cuda --rounds 3 (40 patients): adseg against plain MONAI -> bench_run.txt
#   B    the embedded default workflow (config/config.yaml, mlflow off, train.device cuda), --cores 16
#   B2   bench/workflow.py --results on B's results: time per rule, critical path
#   C    config/gpu.yaml's workflow (2-D UNet 32-512, 128^2 patches, auto spacing)
#   D    4 folds of gpu.yaml's hybrid scheme with `adseg train`: 4 processes sharing the GPU, then one at
#        a time
#   E    config/gpu-3d.yaml: one fold (hybrid) trained and evaluated on C's preprocessed data
# Every stage logs `nvidia-smi dmon -s um -d 1` and each process's GPU memory (per second) beside it.
# $OUT/summary.txt sums it all up (bench/gpu_report.py; rerun it on a copy of $OUT any time).
#
# A stage gets its budget plus whatever the stages before it left unused, never the time reserved for
# the stages after it. Settings: ADSEG_GPU_TOTAL (seconds for everything, default 520),
# ADSEG_GPU_CORES (16), ADSEG_GPU_WORK (scratch folder, default /tmp/adseg-gpu-work), ADSEG_GPU_ONLY
# (stages to run, e.g. "env C D"), ADSEG_KIT_PY (dry run: a Python 3.12 to test the kit's imports with).
set -uo pipefail # no -e: a failing stage must not stop the ones after it

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
SELF=$ROOT/bench/gpu.sh
ORDER=(env A B B2 C D E)
# seconds per stage (485 in all; the kit's unpacking, ~10 s, and 15 s for packing up come on top)
declare -A BUDGET=([env]=20 [A]=105 [B]=115 [B2]=15 [C]=115 [D]=80 [E]=35)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/gpu.log" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
gpu() { [[ $DRY == 0 ]] && have nvidia-smi; }
yaml2json() { python3 -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1])) or {}))' "$1"; }

# Snakemake as the kit runs it: no pulp, so the greedy scheduler; --nolock since a stage killed at its
# time limit would leave a lock behind; --keep-going so one failed job still leaves the others' times.
# Targets go first: --configfile takes every word after it.
smk() {
  python3 -m snakemake "$@" --scheduler greedy --cores "$CORES" --nolock --keep-going --rerun-incomplete
}

# --- per-process GPU memory, from outside (torch.cuda.max_memory_allocated is not visible there) -----
gpu_apps() { # lines "pid, MiB"; the dry run logs the resident memory of python processes instead
  if gpu; then
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null
  else # only this script's own processes
    ps -eo pid=,rss=,comm= | awk '$3 ~ /^python/ { printf "%s, %d\n", $1, $2 / 1024 }' |
      while IFS=', ' read -r pid mem; do
        grep -qzF ADSEG_GPU_MARK= "/proc/$pid/environ" 2>/dev/null && echo "$pid, $mem"
      done
  fi
}

job_of() { # what a process is: the -o argument of an adseg command (its model folder), else its command
  local args=() i
  mapfile -d '' args <"/proc/$1/cmdline" 2>/dev/null || true
  ((${#args[@]})) || { echo "?"; return; }
  for ((i = 0; i < ${#args[@]} - 1; i++)); do
    [[ ${args[i]} == -o ]] && { echo "${args[i + 1]#"$WORK"/}"; return; }
  done
  echo "${args[*]:0:3}" | tr -d ',' | cut -c1-100
}

apps_logger() {
  echo "t,pid,used_mib,job"
  while :; do
    local t
    t=$(date +%s)
    gpu_apps | while IFS=', ' read -r pid mem _; do
      [[ $pid =~ ^[0-9]+$ ]] && echo "$t,$pid,$mem,$(job_of "$pid")"
    done
    sleep 1
  done
}

LOGGERS=()
start_loggers() { # $1: folder
  LOGGERS=()
  if gpu; then
    nvidia-smi dmon -s um -d 1 -o T >"$1/dmon.txt" 2>&1 &
    LOGGERS+=($!)
  fi
  apps_logger >"$1/gpu_apps.csv" 2>/dev/null &
  LOGGERS+=($!)
}
stop_loggers() {
  ((${#LOGGERS[@]})) && kill "${LOGGERS[@]}" 2>/dev/null
  wait "${LOGGERS[@]}" 2>/dev/null
  LOGGERS=()
}

reap() { # processes a stage left behind (Snakemake jobs outlive it): found by their marker, killed by id
  local p pids=()
  for p in /proc/[0-9]*; do
    grep -qxzF "ADSEG_GPU_MARK=$1" "$p/environ" 2>/dev/null && pids+=("${p#/proc/}")
  done
  if ((${#pids[@]})); then
    log "stage $1: killing ${#pids[@]} leftover processes (${pids[*]})"
    kill -9 "${pids[@]}" 2>/dev/null
  fi
}

# --- the experiments' settings: overlays laid over the config files ----------------------------------
write_overlays() {
  local tiny2d="" tiny3d="" tinyB=""
  if [[ $DRY == 1 ]]; then # config/tiny.yaml's sizes: minutes on 2 CPU cores
    tinyB='
dataset: {synthetic: {n_patients: 8, seed: 1}}
preprocess: {target_spacing: [2.0, 2.0, 3.0], workers: 2}
folds: {n: 2}'
    tiny2d="$tinyB
adversarial: {d_features: [8, 16]}"
    tiny3d="$tiny2d"
    tinyB="$tinyB
train: {device: cpu, epochs: 2, val_every: 1}"
    tiny2d="$tiny2d
train: {device: cpu, network: {features: [8, 16, 32]}, patch_size: [32, 32], batch_size: 8,
        samples_per_case: 2, epochs: 2, val_every: 1}"
    tiny3d="$tiny3d
train: {device: cpu, network: {features: [8, 16, 32]}, patch_size: [32, 32, 16], batch_size: 2,
        samples_per_case: 2, epochs: 1, val_every: 1}"
  else
    tinyB='
train: {device: cuda}'
  fi
  printf 'results_dir: %s\nmlflow: {enabled: false}%s\n' "$WORK/B" "$tinyB" >"$WORK/B.yaml"
  printf 'results_dir: %s%s\n' "$WORK/C" "$tiny2d" >"$WORK/C.yaml"
  printf 'results_dir: %s%s\n' "$WORK/C" "$tiny3d" >"$WORK/E.yaml"
}

# gpu.yaml's preprocessed cohort and splits (C's, or made here when C did not get that far)
PRE=() # set by prepared: preprocessed folder, splits file
prepared() {
  local exp=$WORK/C/gpu
  if [[ ! -f $exp/splits.json || ! -f $exp/preprocessed/dataset.json ]]; then
    echo "C left no preprocessed data: making it"
    smk "$exp/splits.json" --configfile config/gpu.yaml "$WORK/C.yaml" >"$OUT/$STAGE/prepare.log" 2>&1 || return 1
  fi
  PRE=(--preprocessed "$exp/preprocessed" --splits "$exp/splits.json")
}

# --- stages (each runs as `bash bench/gpu.sh --stage NAME`, under timeout) ----------------------------
stage_env() {
  {
    date -u
    uname -a
    echo "nproc $(nproc)"
    free -g
    df -h /tmp
    python3 -VV
    command -v python3
    have lscpu && lscpu | grep -E 'Model name|^CPU\(s\)|Thread|MHz'
  } >"$OUT/machine.txt" 2>&1
  if gpu; then
    nvidia-smi -q >"$OUT/nvidia-smi-q.txt" 2>&1
    nvidia-smi -L >"$OUT/nvidia-smi-L.txt" 2>&1
    local f="name,driver_version,memory.total,memory.used,compute_cap,clocks.max.sm,clocks.max.mem"
    f+=",power.limit,temperature.gpu,pcie.link.gen.current,pcie.link.width.current,mig.mode.current"
    f+=",persistence_mode,compute_mode"
    nvidia-smi --query-gpu="$f" --format=csv >"$OUT/gpu.csv" 2>&1 ||
      nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv >"$OUT/gpu.csv" 2>&1
  else
    echo "no nvidia-smi here (dry run: $DRY)" >"$OUT/gpu.csv"
  fi
  # the first import of each package compiles it; Snakemake starts a dozen jobs at once
  if [[ $DRY == 0 ]]; then
    python3 -m compileall -q -j 0 /tmp/site/{monai,nibabel,SimpleITK,snakemake} adseg >/dev/null 2>&1
  fi
  python3 -c "import matplotlib.pyplot" 2>/dev/null # builds matplotlib's font cache once
  python3 - >"$OUT/versions.txt" 2>&1 <<'EOF'
import importlib, platform, time
from importlib.metadata import version
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
for m in ("monai", "SimpleITK", "nibabel", "snakemake", "numpy", "scipy", "matplotlib", "jsonschema"):
    try:
        importlib.import_module(m)
        print(m, version(m))
    except Exception as err:  # noqa: BLE001
        print(m, "NOT IMPORTABLE:", err)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    t0 = time.perf_counter()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    print(f"cuda init {time.perf_counter() - t0:.2f} s")
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "capability", f"{p.major}.{p.minor}", f"{p.total_memory / 2**30:.1f} GiB",
          f"{p.multi_processor_count} SMs", "bf16", torch.cuda.is_bf16_supported())
    free, total = torch.cuda.mem_get_info()
    print(f"memory free {free / 2**30:.1f} of {total / 2**30:.1f} GiB")
EOF
  # start-up costs every job pays: a fresh interpreter importing what adseg's commands import
  local m s rc
  for m in torch monai SimpleITK adseg.training.segmentation; do
    s=$(now)
    python3 -c "import $m" 2>/dev/null
    rc=$?
    echo "import $m: $(since "$s") s (exit $rc)"
  done >"$OUT/import_times.txt"
  for m in "adseg --help" "snakemake --version"; do
    s=$(now)
    python3 -m $m >/dev/null 2>&1
    rc=$?
    echo "python -m $m: $(since "$s") s (exit $rc)"
  done >>"$OUT/import_times.txt"
}

stage_A() { # bench/run.py: its exit 3 (a goal missed) is a measurement, so the stage still passes
  local args=(--device cuda --rounds 3)
  [[ $DRY == 1 ]] && args=(--device cpu --patients 8 --rounds 1)
  python3 bench/run.py "${args[@]}" --data "$WORK/A" >"$OUT/bench_run.txt" 2>&1
  local rc=$?
  echo "bench/run.py ${args[*]}: exit $rc" | tee "$OUT/A/bench_exit.txt"
  [[ $rc == 0 || $rc == 3 ]]
}

stage_B() {
  local s=$(now) rc
  smk --configfile config/config.yaml "$WORK/B.yaml" >"$OUT/B/snakemake.log" 2>&1
  rc=$?
  echo -e "B\tsnakemake --cores $CORES, config/config.yaml\t$rc\t$(since "$s")" | tee "$OUT/B/wall.tsv"
  return $rc
}

stage_B2() {
  python3 bench/workflow.py --results "$WORK/B" >"$OUT/B/workflow_py.txt" 2>&1
}

stage_C() {
  local s=$(now) rc
  smk --configfile config/gpu.yaml "$WORK/C.yaml" >"$OUT/C/snakemake.log" 2>&1
  rc=$?
  echo -e "C\tsnakemake --cores $CORES, config/gpu.yaml\t$rc\t$(since "$s")" | tee "$OUT/C/wall.tsv"
  return $rc
}

train_one() { # variant fold
  local s=$(now) rc
  python3 -m adseg train --config config/gpu.yaml --set "$SET" --scheme hybrid --fold "$2" "${PRE[@]}" \
    -o "$WORK/D/$1/fold_$2" --no-progress >"$OUT/D/$1_fold_$2.log" 2>&1
  rc=$?
  echo -e "$1\tfold_$2\t$rc\t$(since "$s")" >>"$OUT/D/jobs.tsv"
  return $rc
}

stage_D() { # several fold jobs sharing the GPU against one at a time (the local profile's gpu=1)
  prepared || return 1
  SET=$(yaml2json "$WORK/C.yaml")
  local n f s rc=0 pids=()
  n=$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(min(4, len(s["folds"] if isinstance(s, dict) else s)))' "$WORK/C/gpu/splits.json")
  echo -e "variant\tjob\texit\tseconds" >"$OUT/D/jobs.tsv"
  s=$(now)
  for ((f = 0; f < n; f++)); do
    train_one concurrent "$f" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  echo -e "concurrent\tall $n\t$rc\t$(since "$s")" >>"$OUT/D/jobs.tsv"
  s=$(now)
  for ((f = 0; f < n; f++)); do train_one sequential "$f" || rc=1; done
  echo -e "sequential\tall $n\t$rc\t$(since "$s")" >>"$OUT/D/jobs.tsv"
  cat "$OUT/D/jobs.tsv"
  return $rc
}

stage_E() { # gpu-3d.yaml on gpu.yaml's data (their preprocess sections are the same)
  prepared || return 1
  local set3d model=$WORK/E/hybrid/fold_0 s rc
  set3d=$(yaml2json "$WORK/E.yaml")
  s=$(now)
  python3 -m adseg train --config config/gpu-3d.yaml --set "$set3d" --scheme hybrid --fold 0 "${PRE[@]}" \
    -o "$model" --no-progress >"$OUT/E/train.log" 2>&1
  rc=$?
  echo -e "train\t$rc\t$(since "$s")" | tee "$OUT/E/times.tsv"
  ((rc)) && return $rc
  s=$(now)
  python3 -m adseg evaluate "$model" --config config/gpu-3d.yaml --set "$set3d" "${PRE[@]:0:2}" \
    -o "$model/metrics.tsv" --no-progress >"$OUT/E/evaluate.log" 2>&1
  rc=$?
  echo -e "evaluate\t$rc\t$(since "$s")" | tee -a "$OUT/E/times.tsv"
  return $rc
}

# --- what comes back: small files only ----------------------------------------------------------------
collect_exp() { # experiment folder, destination
  local src=$1 dst=$2 f rel
  [[ -d $src ]] || return 0
  mkdir -p "$dst"
  [[ -d $src/benchmarks ]] && cp -r "$src/benchmarks" "$dst/"
  [[ -d $src/logs ]] && cp -r "$src/logs" "$dst/"
  for f in summary.md summary.tsv tests.tsv validation.json splits.json preprocessed/plans.json preprocessed/qc.tsv; do
    [[ -f $src/$f ]] && cp "$src/$f" "$dst/"
  done
  while IFS= read -r f; do # <scheme>/fold_<k>/training_log.tsv -> training_logs/<scheme>_fold_<k>.tsv
    rel=${f#"$src"/}
    mkdir -p "$dst/training_logs"
    cp "$f" "$dst/training_logs/$(dirname "$rel" | tr / _).tsv"
  done < <(find "$src" -name training_log.tsv 2>/dev/null)
}

collect() {
  case $1 in
  B) collect_exp "$WORK/B/default" "$OUT/B" ;;
  C) collect_exp "$WORK/C/gpu" "$OUT/C" ;;
  D) collect_exp "$WORK/D" "$OUT/D" ;;
  E) collect_exp "$WORK/E" "$OUT/E" ;;
  esac
}

run_stage() {
  local name=$1 later=0 seen=0 n t s rc
  # seconds left, less what the stages after this one are owed
  for n in "${ORDER[@]}"; do
    ((seen)) && [[ " $ONLY " == *" $n "* ]] && later=$((later + BUDGET[$n]))
    [[ $n == "$name" ]] && seen=1
  done
  t=$(awk -v total="$TOTAL" -v used="$(since "$T0")" -v later="$later" -v reserve=15 \
    'BEGIN { printf "%d", total - used - later - reserve }')
  mkdir -p "$OUT/$name"
  if ((t < 10)); then
    log "stage $name: skipped, ${t} s left for it"
    echo -e "$name\tskipped\t0\t$t\t$(since "$T0")" >>"$OUT/stages.tsv"
    return
  fi
  log "stage $name: up to $t s (budget ${BUDGET[$name]} s)"
  start_loggers "$OUT/$name"
  local start
  start=$(since "$T0")
  s=$(now)
  env ADSEG_GPU_MARK="$name.$$" STAGE="$name" timeout -k 10 "$t" bash "$SELF" --stage "$name" \
    >"$OUT/$name/stage.log" 2>&1
  rc=$?
  local took
  took=$(since "$s")
  reap "$name.$$"
  stop_loggers
  collect "$name"
  echo -e "$name\t$rc\t$took\t$t\t$start" >>"$OUT/stages.tsv"
  log "stage $name: exit $rc after $took s"
}

setup() { # the kit, exactly as ../shared/tools/gpu-kit.sh says, then adseg itself on PYTHONPATH
  local s=$(now) rc=0 w mod kitpy=python3
  rm -rf /tmp/site
  timeout 90 python3 -c "import tarfile; tarfile.open('.gpu/site.tar.xz').extractall('/tmp/site')" || rc=$?
  [[ $DRY == 1 ]] && kitpy=${ADSEG_KIT_PY:-python3}
  for w in .gpu/extra/*.whl; do # what the kit lacks and Snakemake needs (wrapt, tabulate, attrs)
    [[ -f $w ]] || continue
    mod=$(basename "$w" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
    if ! PYTHONPATH=/tmp/site "$kitpy" -c "import $mod" 2>/dev/null; then
      "$kitpy" -m zipfile -e "$w" /tmp/site && log "kit: added $mod from $w"
    fi
  done
  if [[ $DRY == 0 ]]; then
    export PYTHONPATH=/tmp/site:$ROOT PATH=/tmp/site/bin:$PATH
    mkdir -p /tmp/bin
    rm -f /tmp/bin/python
    printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >/tmp/bin/python
    chmod +x /tmp/bin/python
    export PATH=/tmp/bin:$PATH # rules call `python`; a symlink would lose the image's venv
  else
    # the kit is for Python 3.12; here run the active environment (bench/gpu-sim.sh makes one with the
    # GPU machine's package set) and only check which of the kit's modules import
    export PYTHONPATH=$ROOT
  fi
  local check='
import importlib, platform
for m in ("SimpleITK", "monai", "nibabel", "snakemake", "wrapt", "tabulate", "attrs"):
    try:
        importlib.import_module(m)
        r = "ok"
    except Exception as err:  # noqa: BLE001
        r = f"FAILS: {type(err).__name__}: {err}"
    print(f"{platform.python_version()}\t{m}\t{r}")'
  {
    for py in python3 ${ADSEG_KIT_PY:-}; do PYTHONPATH=/tmp/site "$py" -c "$check" 2>&1; done
    echo -e "stages\tadseg\t$(python3 -c 'import adseg, SimpleITK, monai, nibabel, snakemake; print(adseg.__file__)' 2>&1 | tail -1)"
  } >"$OUT/kit_imports.tsv"
  echo -e "kit\t$rc\t$(since "$s")\t90\t0" >>"$OUT/stages.tsv"
  log "kit: unpacked in $(since "$s") s (exit $rc); imports: $(grep -c FAILS "$OUT/kit_imports.tsv") failing"
}

main() {
  DRY=${ADSEG_GPU_DRY:-0}
  OUT=$(realpath -m "${OUT:-gpu-out}")
  WORK=${ADSEG_GPU_WORK:-/tmp/adseg-gpu-work}
  CORES=${ADSEG_GPU_CORES:-16}
  TOTAL=${ADSEG_GPU_TOTAL:-520}
  ONLY=" ${ADSEG_GPU_ONLY:-${ORDER[*]}} "
  if [[ $DRY == 1 ]]; then # 2 CPU cores, shared: generous limits, the logic is what is tested
    CORES=${ADSEG_GPU_CORES:-2}
    TOTAL=${ADSEG_GPU_TOTAL:-2400}
    local n
    for n in "${ORDER[@]}"; do BUDGET[$n]=$((BUDGET[$n] * 4)); done
  fi
  T0=$(now)
  export DRY OUT WORK CORES PYTHONUNBUFFERED=1 MPLBACKEND=Agg
  mkdir -p "$OUT"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  echo -e "stage\texit\tseconds\ttimeout_s\tstarted_s" >"$OUT/stages.tsv"
  log "adseg GPU measurement, dry run $DRY, out $OUT, work $WORK, $TOTAL s in all, commit $(cat bench/COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo ?)"
  setup
  write_overlays
  local name
  for name in "${ORDER[@]}"; do
    [[ $ONLY == *" $name "* ]] && run_stage "$name"
  done
  # small files of every experiment, for a later look (no checkpoints, no images)
  (cd "$WORK" && find . -type f -size -2M \( -name '*.md' -o -name '*.tsv' -o -name '*.json' -o -name '*.log' \
    -o -name '*.yaml' \) ! -path './A/*' ! -path '*/preprocessed/properties/*' -print0 |
    tar --null -czf "$OUT/results-summaries.tar.gz" -T -) 2>>"$OUT/gpu.log"
  timeout 30 python3 bench/gpu_report.py "$OUT" >"$OUT/summary.txt" 2>>"$OUT/gpu.log"
  log "done in $(since "$T0") s; $(du -sh "$OUT" | cut -f1) in $OUT"
  cat "$OUT/summary.txt" 2>/dev/null || cat "$OUT/stages.tsv" # the device tool shows the output's tail
}

[[ ${BASH_SOURCE[0]} != "$0" ]] && return 0 # sourced (a test of the functions): define them only
if [[ ${1:-} == --stage ]]; then
  "stage_$2"
  exit $?
fi
main
