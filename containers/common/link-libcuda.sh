#!/bin/sh
# Triton (torch.compile on GPU) links its launcher with -lcuda, so it needs a file named libcuda.so. Under --nv
# Apptainer binds the host driver into /.singularity.d/libs, often only as libcuda.so.1, and `ldconfig -p` (Triton's
# other lookup) does not list that folder. This folder holds a libcuda.so link that resolves once --nv binds the
# driver; environment.sh points TRITON_LIBCUDA_PATH at it. No ldconfig is run: the image stays read-only at run time.
set -eu
LINK_DIR=${NANOFORGE_LIBCUDA_DIR:-/opt/nanoforge/libcuda}
mkdir -p "$LINK_DIR"
ln -sfn /.singularity.d/libs/libcuda.so.1 "$LINK_DIR/libcuda.so"
ln -sfn /.singularity.d/libs/libcuda.so.1 "$LINK_DIR/libcuda.so.1"
