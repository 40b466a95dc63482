# Sourced by .ci/run where nvcc exists: provides cuBLAS (a pip wheel: shared libraries and
# headers) so that the CUDA backend is compiled on every CI run, even without a GPU. One
# architecture is enough to prove the code compiles; a release build uses the default list.
cublas_dir="${REPADAPTER_CUBLAS_CACHE:-$HOME/.cache/repadapter/cublas-13.1.1.3}"
if [ ! -f "$cublas_dir/.complete" ]; then
  rm -rf "$cublas_dir"
  python3 -m pip install -q --no-deps --target "$cublas_dir" nvidia-cublas==13.1.1.3 || return 1
  touch "$cublas_dir/.complete"
fi
export REPADAPTER_CUDA=ON
export REPADAPTER_CUBLAS_DIR="$cublas_dir"
export REPADAPTER_CUDA_ARCHS="${REPADAPTER_CUDA_ARCHS:-90}"
echo "CUDA backend will be compiled (archs $REPADAPTER_CUDA_ARCHS) against cuBLAS in $cublas_dir"
