# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY bridge ./bridge
# The locked versions, the same the suite ran against: the lock constrains what is installed.
RUN pip install --no-cache-dir --prefix=/install --constraint requirements.lock .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data bridge && mkdir -p /data /etc/bridge \
    && chown bridge /data
COPY --from=build /install /usr/local
COPY docker/config.toml /etc/bridge/config.toml
ENV BRIDGE_CONFIG=/etc/bridge/config.toml
USER 10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["bridge", "serve"]
