# notifylab image: one image for server instances and workers (the compose
# file picks the command). Build: docker build -t notifylab .
# Run alone, in the embedded single-process mode (no RabbitMQ, no Redis):
#   docker run --rm -p 8080:8080 -e NOTIFYLAB_BROKER_URL=memory:// \
#       -e NOTIFYLAB_REDIS_URL=memory:// notifylab

# --- Stage 1: the React client, built into frontend/dist ----------------------
FROM node:20-slim AS frontend
WORKDIR /src/frontend
# The whole frontend/ directory (package.json, package-lock.json, .npmrc,
# index.html, vite.config.js, src/, ...): `npm ci` first deletes any
# node_modules that came along from the host and installs exactly the lockfile.
COPY frontend/ ./
RUN npm ci --no-audit --no-fund && npm run build

# --- Stage 2: the Python package ---------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Only what `pip install .` reads (pyproject.toml names README.md as the
# readme), so that editing notebooks or tests does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY notifylab/ ./notifylab/
# Editable, so the package stays in /app beside docs/ (the instances serve
# docs/openapi.yaml at /api/openapi.yaml) and frontend/dist.
RUN pip install -e ".[kit]"
COPY docs/openapi.yaml ./docs/openapi.yaml

# The package is installed into site-packages, away from /app, so its default
# static directory (next to the source tree) does not exist here: point it at
# the built client explicitly.
COPY --from=frontend /src/frontend/dist ./frontend/dist
ENV NOTIFYLAB_STATIC_DIR=/app/frontend/dist \
    NOTIFYLAB_HOST=0.0.0.0 \
    NOTIFYLAB_PORT=8080

# Nothing in the container needs root.
RUN useradd --system --no-create-home --shell /usr/sbin/nologin notifylab
USER notifylab

EXPOSE 8080
CMD ["python", "-m", "notifylab", "serve"]
