"""Index backends other than the exact kernels, each imported only when an index asks for it.

* :mod:`.faiss` -- faiss's binary indexes (``faiss-flat``, ``faiss-hnsw``, ``faiss-ivf``) for
  1-bit codes and ``IndexFlatIP`` for float32 embeddings; needs the optional ``faiss-cpu``
  (``pip install 'hqgnn[faiss]'``). ``import hqgnn.index`` never imports faiss.
"""

#: The faiss backend names (see :mod:`hqgnn.index.backends.faiss`).
FAISS_BACKENDS = ("faiss-flat", "faiss-hnsw", "faiss-ivf")
