#!/usr/bin/env bash
# llama.cpp as a second, independent engine (docs/validation.md): build llama-cpp-python from the
# package registry's source distribution, CPU only, into the project's venv. About 15-25 minutes on
# 2 cores. Nothing else needs it: the tests that do skip, with the reason, where it is absent.
#
#   bash scripts/build_llama_cpp.sh            # PIP=path/to/pip to use another environment
set -euo pipefail
cd "$(dirname "$0")/.."
pip=${PIP:-.venv/bin/pip}
export CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
"$pip" install --no-binary llama-cpp-python "llama-cpp-python==0.3.36"
