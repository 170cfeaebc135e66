"""The web page and JSON API on a run's locked model (``python -m handjax.serve``).

- ``app``: the FastAPI routes (``create_app``), error answers, the model card endpoint;
- ``batcher``: concurrent requests -> one padded forward pass, behind a bounded queue;
- ``uploads``: what an upload must be (4xx reasons), quality warnings, the Grad-CAM overlay's PNG;
- ``limits``: the request-size limit (413) as ASGI middleware;
- ``pages/``: the photo page and the model card page (HTML, CSS, plain JavaScript).

See docs/serve.md.
"""
