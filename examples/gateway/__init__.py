"""The demo AI gateway: an OpenAI-compatible API over simulated providers, instrumented with
every metric family of gatewayz-metrics.

- `python -m examples.gateway`: the demo on http://127.0.0.1:8000 with built-in traffic;
- `examples.gateway.app:app` / `create_app(registry=..., settings=...)`: the application;
- `python -m examples.gateway.load --url ... --duration ...`: a load generator.

Nothing is imported here, so `python -m examples.gateway.load` does not build an app.
"""
