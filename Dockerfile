# GPU image for the PRoLoRA harness: CUDA 12.8 runtime, Python 3.11, the pinned stack of requirements.txt with
# the CUDA build of torch, DeepSpeed, and this project (the `prolora` method distribution and the harness)
# installed editable.
#
#   docker build -t prolora .
#   docker run --gpus all -e HF_TOKEN -v $PWD/data:/workspace/data -v $PWD/output:/workspace/output prolora \
#       ./ft_llama2_7b_superni_mmlu.sh 8 1 2 2 2e-4 42 0
#
# No token is baked in: gated models (Llama-2) read HF_TOKEN from the environment at run time.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/workspace/.cache/huggingface

RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev git build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace
# torch first, from the CUDA 12.8 wheel index; the other pins then resolve against it.
RUN pip install --upgrade pip wheel setuptools \
    && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
COPY requirements.txt .
RUN pip install -r requirements.txt
# DeepSpeed builds its ops just in time; build it against the torch above (no isolated build env).
RUN DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==0.19.8

COPY prolora ./prolora
COPY pyproject.toml README.md ./
COPY open_instruct ./open_instruct
COPY eval ./eval
COPY scripts ./scripts
COPY configs ./configs
COPY benchmarks ./benchmarks
COPY ft_llama2_7b_*.sh ./
RUN pip install --no-deps -e ./prolora -e .

CMD ["bash"]
