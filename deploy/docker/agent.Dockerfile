# syntax=docker/dockerfile:1
# The node agent with the Python engine, on a CUDA PyTorch runtime image; Node 20 is copied in
# from the official image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t factsweep/agent .
ARG PYTORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# --- build: TypeScript compile of proto -> shared -> node-agent
FROM node:20-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.base.json tsconfig.json ./
COPY proto/package.json proto/
COPY shared/package.json shared/
COPY planning/package.json planning/
COPY testing/package.json testing/
COPY coordinator/package.json coordinator/
COPY sweepctl/package.json sweepctl/
COPY node-agent/package.json node-agent/
COPY test/package.json test/
RUN npm ci --no-audit --no-fund
COPY proto proto
COPY shared shared
COPY testing testing
COPY node-agent node-agent
RUN npx tsc -b node-agent \
 && npm ci --omit=dev --no-audit --no-fund -w proto -w shared -w node-agent

FROM node:20-slim AS node

# --- runtime: PyTorch + CUDA, the engine package, Node and the agent
FROM ${PYTORCH_IMAGE}
COPY --from=node /usr/local/bin/node /usr/local/bin/node
# The engine's own needs beyond torch: the protobuf runtime for engine/proto, safetensors loading.
RUN pip install --no-cache-dir "protobuf>=3.21" "safetensors>=0.4" numpy
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/proto/package.json proto/
COPY --from=build /src/proto/dist proto/dist
COPY --from=build /src/shared/package.json shared/
COPY --from=build /src/shared/dist shared/dist
COPY --from=build /src/node-agent/package.json node-agent/
COPY --from=build /src/node-agent/dist node-agent/dist
COPY engine engine
# The agent starts engine workers with this interpreter (the image's PyTorch).
ENV PYTHONPATH=/app PYTHONUNBUFFERED=1 NODE_ENV=production FACTSWEEP_PYTHON=/opt/conda/bin/python
RUN useradd --create-home --uid 1000 factsweep && mkdir -p /models && chown factsweep /models
USER factsweep
# HTTP: /metrics and health
EXPOSE 9470
ENTRYPOINT ["node", "/app/node-agent/dist/main.js"]
CMD ["--coordinator", "coordinator:7070", "--nats-url", "nats://nats:4222", "--http-port", "9470"]
