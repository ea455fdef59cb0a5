#!/usr/bin/env bash
# The whole suite as on another machine: every stage rebuilt in a fresh artifacts folder, then
# `python -m pytest`, all under the environment given on the command line. torch picks its CPU
# kernels by ATEN_CPU_CAPABILITY (default, avx2, avx512: what another CPU would run) and its
# thread count by OMP_NUM_THREADS (what another core count would run); the notebooks' kernels
# inherit both. Run from the repository root, with the course's virtual environment active:
#
#   bash bench/simulate_machine.sh ATEN_CPU_CAPABILITY=default
#   bash bench/simulate_machine.sh OMP_NUM_THREADS=1
#
# Prints the time of the stage builds and of the suite, pytest's summary of what failed and its
# slowest tests; the whole log goes to a file whose path it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
for setting in "$@"; do export "$setting"; done
export RLHF_KIT_HOME
RLHF_KIT_HOME="$(mktemp -d /tmp/rlhf-kit-machine-XXXXXX)"
trap 'rm -rf "$RLHF_KIT_HOME"' EXIT
log="$RLHF_KIT_HOME.log"
python -c "import torch; print('simulated machine:', '${*:-as is}', '| kernels', \
torch.backends.cpu.get_cpu_capability(), '| torch threads', torch.get_num_threads())"
start=$SECONDS
# The base model is pretrained here too, as a learner's `rlhf-kit build base --from-scratch` would:
# the stages after it then differ from the ones that made the stored outputs in more than the
# last bits. The bigger base model, which no stage is built from, is installed as shipped.
rlhf-kit build base --from-scratch >/dev/null 2>&1
rlhf-kit build ppo dpo grpo big-base >/dev/null 2>&1
built=$SECONDS
echo "stages built in $((built - start)) s"
status=0
python -m pytest -q -rfE --durations=25 2>&1 | tee "$log" | grep -E "^(FAILED|ERROR)|passed|failed|^[0-9.]+s " \
    || status=$?
echo "suite ran in $((SECONDS - built)) s, exit status $status; the whole log: $log"
exit $status
