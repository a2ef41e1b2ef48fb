"""One router per resource of the API, each built from the app's :class:`~outerloop.api.context.ApiContext`:
recommendations, events, profiles, items, health. (Conversation, the operator console and the
refresh route come from their own packages; :func:`outerloop.api.app.create_app` mounts them all.)"""
