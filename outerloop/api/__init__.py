"""The HTTP API: the FastAPI app that composes the request path (:mod:`outerloop.inner_loop.serving`)
with the conversation, operator console and refresh routes, its OpenAPI document and the
``outerloop serve`` command. It sits on top: nothing in the library imports it."""
