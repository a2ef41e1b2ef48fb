"""The inner loop, in two packages by role:

- :mod:`outerloop.inner_loop.model`: what training produces (transformer, training, FAISS index,
  artifacts, alignment, warm start, the ranker's model, the ensemble);
- :mod:`outerloop.inner_loop.serving`: what answers a request (funnel, user state, the answer).

:mod:`outerloop.inner_loop.ranker_train` trains the ranker on the funnel's own candidates, so it
sits above both. Nothing is imported here (``outerloop train --help`` must stay fast).
"""
