"""What training produces: the sequential transformer, its training and offline evaluation,
the FAISS index, the artifacts directory, embedding alignment, warm start, the ranker's model
and features, co-visitation and the outer loop's ensemble. Nothing here serves requests or
imports the outer loop."""
