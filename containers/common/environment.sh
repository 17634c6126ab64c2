# Sourced by the images' %environment at every start (sh). Defaults only where the caller set nothing, so
# values passed in with APPTAINERENV_/--env or inherited from the host win.
# shellcheck shell=sh

export VIRTUAL_ENV=/opt/venv
export PATH="/opt/venv/bin:$PATH"
# Data, staged assets and caches: point this at scratch (home quotas are small).
export NANOFORGE_HOME="${NANOFORGE_HOME:-$HOME/.cache/nanoforge}"
# Packages in the host's ~/.local must not shadow the image's.
export PYTHONNOUSERSITE=1
# Compute nodes have no internet: never let a library try the network (the stage app lifts these).
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
# One OpenMP thread pool per SLURM task, sized to its CPUs, instead of every rank grabbing every core.
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export OMP_NUM_THREADS="$SLURM_CPUS_PER_TASK"
fi
# Under --nv the host driver is bound into /.singularity.d/libs (see link-libcuda.sh for Triton's libcuda).
if [ -d /opt/nanoforge/libcuda ]; then
    export TRITON_LIBCUDA_PATH=/opt/nanoforge/libcuda
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/.singularity.d/libs"
fi
