# LightTTS on a CUDA host.
#
#   docker build -t lighttts .
#   docker run --gpus all -p 8080:8080 --shm-size 4g -v $PWD/models:/models lighttts \
#       --model_dir /models/CosyVoice2-0.5B
#
# --shm-size: request slots and audio rings live in /dev/shm; Docker's default 64 MB is too small (1 GB is
# enough for the default --running_max_req_size 30, 4 GB leaves room). With no --model_dir the server makes and
# serves a tiny random model (its audio is noise). CPU host: Dockerfile.cpu.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# PyTorch's CUDA 13.0 build (needs an NVIDIA driver >= 580); the GPU benchmarks ran on this torch.
ARG TORCH_SPEC=torch==2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG EXTRAS=serve,gpu

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 lighttts && mkdir -p /models && chown lighttts /models

ENV LIGHTTTS_VENV=/opt/lighttts/venv LIGHTTTS_PORT=8080 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY . /opt/lighttts/src
RUN sh /opt/lighttts/src/deploy/docker/install.sh "$LIGHTTTS_VENV" /opt/lighttts/src "$TORCH_SPEC" "$TORCH_INDEX" "$EXTRAS"

USER lighttts
WORKDIR /home/lighttts
VOLUME /models
EXPOSE 8080
# /readiness: 200 once every worker process is loaded and alive, 503 while loading or after a worker died.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/opt/lighttts/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LIGHTTTS_PORT', '8080') + '/readiness', timeout=4)"]
ENTRYPOINT ["tini", "--", "/opt/lighttts/src/deploy/docker/entrypoint.sh"]
CMD []
