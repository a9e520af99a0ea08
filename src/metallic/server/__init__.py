"""OpenAI-compatible HTTP server for metallic.

``protocol`` parses and validates request bodies, ``shapes`` builds the response objects and SSE
frames, ``metrics`` renders Prometheus text, ``static/index.html`` is the chat page. The app
(FastAPI + uvicorn) is in ``app``; this package's ``__init__`` imports none of them so that the
pure pieces load without the web stack.
"""
