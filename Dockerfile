# liar-export release image.
#
#   CPU (default):  docker build -t liar-export .
#   CUDA:           docker build -t liar-export:cuda --build-arg VARIANT=cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04 \
#                     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 .
#   Air-gapped:     --build-arg BASE_IMAGE=localhost/debian:bookworm (docker/make-base-image.sh)
#   TLS proxy:      --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
#   Local wheels:   put *.whl in docker/wheels/ (e.g. the CPU torch wheel) and,
#                   when the PyTorch CPU index is unreachable, --build-arg TORCH_INDEX_URL=
# docker/build.sh does all of this with buildah or docker.

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUNTIME_IMAGE=${BASE_IMAGE}

# ---------------------------------------------------------------- builder ---
FROM ${BASE_IMAGE} AS builder
ARG VARIANT=cpu
ARG TORCH_VERSION=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
        build-essential cmake ninja-build ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml ./
COPY docker/pip-env.sh docker/pins.py docker/

# llama.cpp compiled portable (no -march=native), so the image runs on any x86-64 CPU, on every
# core of the builder (Ninja, CMAKE_BUILD_PARALLEL_LEVEL=nproc; the log shows [n/N] steps). Only the
# libllama/ggml that llama_cpp.Llama loads: no multimodal (mtmd/llava) library, which liar-export never uses.
RUN --mount=type=secret,id=pip_cert --mount=type=bind,source=docker/wheels,target=/wheels \
    . docker/pip-env.sh \
 && version=$(python3 docker/pins.py llama-cpp-python) \
 && cmake_args="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
 && if [ "$VARIANT" = cuda ]; then cmake_args="$cmake_args -DGGML_CUDA=on"; fi \
 && echo "llama-cpp-python $version: CMAKE_ARGS=$cmake_args, $(nproc) build jobs" \
 && CMAKE_ARGS="$cmake_args" CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        pip wheel --verbose --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -w /tmp/llama-wheel

RUN --mount=type=secret,id=pip_cert --mount=type=bind,source=docker/wheels,target=/wheels \
    . docker/pip-env.sh \
 && src="" \
 && torch="${TORCH_VERSION:-$(python3 docker/pins.py torch)}" \
 && echo "torch $torch" \
 && if [ "$VARIANT" = cpu ]; then src="--find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url $TORCH_INDEX_URL}"; fi \
 && pip install $src "torch==$torch"

COPY README.md ./
COPY toolchain toolchain
COPY exporters exporters
COPY benchmarks benchmarks
RUN --mount=type=secret,id=pip_cert --mount=type=bind,source=docker/wheels,target=/wheels \
    . docker/pip-env.sh \
 && extras="" && if [ "$VARIANT" = cuda ]; then extras="[gpu]"; fi \
 && pip install --find-links /tmp/llama-wheel --find-links /wheels ".$extras" \
 && if [ "$VARIANT" = cuda ]; then pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu; fi \
 && python -c "import toolchain, exporters, benchmarks, llama_cpp, torch, onnxruntime"

# ---------------------------------------------------------------- runtime ---
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG VARIANT=cpu

LABEL org.opencontainers.image.title="liar-export" \
      org.opencontainers.image.description="Structured pruning with LIAR reconstruction, exported to GGUF and ONNX" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.liar-export.variant="${VARIANT}"

# python3 for the venv, libgomp1 for llama.cpp's OpenMP threads.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --shell /usr/sbin/nologin liar

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/liar/.cache/huggingface

USER liar
WORKDIR /home/liar
ENTRYPOINT ["liar-export"]
CMD ["--help"]
