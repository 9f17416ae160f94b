"""Index backends other than the exact kernels, each imported only when an index asks for it.

* :mod:`.faiss` -- faiss's binary indexes (``faiss-flat``, ``faiss-hnsw``, ``faiss-ivf``) for
  1-bit codes and ``IndexFlatIP`` for float32 embeddings; needs the optional ``faiss-cpu``
  (``pip install 'hqgnn[faiss]'``). ``import hqgnn.index`` never imports faiss.
* :mod:`.cascade` -- ``cascade`` for b-bit codes: the top-``C`` candidates by Hamming distance
  on the sign plane (the codes' top bit plane), re-ranked exactly with the full codes.
"""

#: The faiss backend names (see :mod:`hqgnn.index.backends.faiss`).
FAISS_BACKENDS = ("faiss-flat", "faiss-hnsw", "faiss-ivf")
#: The cascade backend's name (see :mod:`hqgnn.index.backends.cascade`).
CASCADE = "cascade"


def with_backend(index, backend: str, **backend_params):
    """A view of ``index`` (a :class:`~hqgnn.index.engine.QuantizedIndex` or ``FloatIndex``) searched by
    ``backend`` with ``backend_params``: the codes, ids and seen items are shared, ``index`` is left as it
    was. Raises :class:`~hqgnn.errors.ConfigError` for a backend or parameters the index cannot use."""
    import copy

    view = copy.copy(index)
    view.backend_params = dict(backend_params)
    if backend == CASCADE:  # float32 embeddings, bad candidates: refused now, not at the first search
        from . import cascade

        cascade.check(view)
    view.backend = backend  # validated; the view gets its own backend state
    return view
