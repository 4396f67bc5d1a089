# syntax=docker/dockerfile:1
# The coordinator and its CLI (sweepctl). Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t factsweep/coordinator .

# --- build: full dev install, TypeScript compile of proto -> shared -> planning -> coordinator -> sweepctl
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
COPY planning planning
COPY testing testing
COPY coordinator coordinator
COPY sweepctl sweepctl
RUN npx tsc -b sweepctl

# --- runtime: production dependencies of the workspaces it runs, and their dist/ only
FROM node:20-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
COPY proto/package.json proto/
COPY shared/package.json shared/
COPY planning/package.json planning/
COPY testing/package.json testing/
COPY coordinator/package.json coordinator/
COPY sweepctl/package.json sweepctl/
COPY node-agent/package.json node-agent/
COPY test/package.json test/
RUN npm ci --omit=dev --no-audit --no-fund -w proto -w shared -w planning -w testing -w coordinator -w sweepctl \
 && npm cache clean --force
COPY --from=build /src/proto/dist proto/dist
COPY --from=build /src/shared/dist shared/dist
COPY --from=build /src/planning/dist planning/dist
COPY --from=build /src/testing/dist testing/dist
COPY --from=build /src/coordinator/dist coordinator/dist
COPY --from=build /src/sweepctl/dist sweepctl/dist
RUN printf '#!/bin/sh\nexec node /app/sweepctl/dist/cli.js "$@"\n' > /usr/local/bin/sweepctl \
 && chmod +x /usr/local/bin/sweepctl \
 && mkdir -p /models && chown node:node /models
USER node
# gRPC (agents and sweepctl), HTTP (/metrics, /healthz, /readyz, the API)
EXPOSE 7070 9464
HEALTHCHECK --interval=15s --timeout=3s CMD node -e "fetch('http://127.0.0.1:9464/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "/app/coordinator/dist/main.js"]
CMD ["--grpc-port", "7070", "--http-port", "9464", "--nats-url", "nats://nats:4222", "--model-root", "/models"]
