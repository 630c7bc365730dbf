# The aggregator's image. Alone it runs the quick start (`aggregator run`, an embedded Redis
# under /config/.aggregator); docker-compose.yml gives each of its services its own command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aggregator ./aggregator
RUN pip install --no-cache-dir .
ENV AGGREGATOR_CONFIG=/config/feeds.yaml
EXPOSE 8000
CMD ["aggregator", "run", "--host", "0.0.0.0", "--port", "8000"]
