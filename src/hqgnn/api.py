"""The Python API: a recommender object with fit / evaluate / recommend / save / load.

    >>> from hqgnn import Recommender
    >>> rec = Recommender(model="hqgnn", bits=4, epochs=50)
    >>> metrics = rec.fit("synthetic", out_dir="runs/demo")
    >>> items, scores = rec.recommend([0, 1], k=10)
    >>> rec2 = Recommender.load("runs/demo")

``fit`` trains (:mod:`hqgnn.training`) and writes a run folder (:mod:`hqgnn.runs`) when
``out_dir`` is given; ``load`` reads one back: it builds the model from the run's config
(:func:`hqgnn.models.build_model`) and reads its weights, without the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .config import Config
from .data import SYNTHETIC, InteractionData
from .errors import CheckpointError, ConfigError, DataError
from .index.results import Recommendations
from .loading import build_index, load_run, prepare_data
from .models import build_model, initial_model, resolve_device, use_threads
from .runs import CHECKPOINT, METRICS, RunFolder, clear_run


class Recommender:
    """A trained (or trainable) recommender with its data, in the shape of ``implicit``'s models.

    >>> rec = Recommender(config="configs/ml-1m-hqgnn.yaml", bits=2)     # the file's model: hqgnn
    >>> rec.fit("../shared/data/ml-1m", out_dir="runs/ml-1m-hq2")
    >>> items, scores = rec.recommend([0, 1], k=10)

    Args:
        model: the method (``lightgcn``, ``hqgnn``, ``ste``, ``hashgnn``, ``bigear``, ``ptq``,
            ``lsh``; ``mf`` reads as ``lightgcn`` with ``layers=0``). None (the default) keeps
            the config file's, else :class:`~hqgnn.config.Config`'s default ``lightgcn``.
        config: a YAML file of settings or a :class:`~hqgnn.config.Config`.
        budget_bytes: memory per item in bytes: ``bits`` and ``dim`` become the code that the
            measured frontier ranks best within it (:func:`hqgnn.frontier.apply_budget`; not with
            ``bits`` or ``dim``); the pick is ``budget_pick`` (``budget_pick.line()`` says why).
            The frontier is that of the ``data`` setting's data set, and :meth:`fit` picks
            again from that of the data it trains on (else MovieLens-1M's); a run folder
            records the pick (``budget.json``), which ``fit(..., resume=True)`` trains again.
        **settings: any other setting (``bits=4``, ``epochs=50``, ...), over the file's.

    Attributes (after :meth:`fit` or :meth:`load`): ``cfg``; ``data``; ``model`` (the
    trained :class:`~hqgnn.models.ScoringModel`); ``adj``, its graph; ``metrics``, the test
    metrics of ``metrics.json`` (None for a loaded run without one); ``trainer``, the
    :class:`~hqgnn.training.Trainer` of :meth:`fit` (None after :meth:`load`).

    Raises :class:`~hqgnn.errors.ConfigError` for an unknown setting or a value out of range.
    """

    def __init__(self, model: Optional[str] = None, config: Optional[Union[str, Config]] = None,
                 budget_bytes: Optional[float] = None, **settings):
        if isinstance(config, Config):
            base = config
        else:
            base = Config.load(config) if config else Config()
        values = settings if model is None else {"model": model, **settings}
        self.cfg = base.updated(values, "Recommender()")
        if budget_bytes is None:  # with a budget: validated once it has set the model, bits and dims
            self.cfg = self.cfg.validate()
        #: the frontier's pick for ``budget_bytes`` (:class:`hqgnn.frontier.Pick`), else None
        self.budget_pick = None
        self._budget = None  # what the budget's pick starts from: fit() picks again for its data's frontier
        if budget_bytes is not None:
            self._budget = (self.cfg, budget_bytes, {"bits": settings.get("bits"), "model": model, "flag": "budget_bytes",
                                                     "overrides": [f"{k}={v}" for k, v in settings.items() if k == "dim"]})
            self._pick_budget(None)
        self.trainer = None
        self._record_applied = False  # hqgnn train --resume applied budget.json itself (explicit flags kept)
        self.data: Optional[InteractionData] = None
        self.metrics: Optional[dict] = None
        self.adj: Optional[torch.Tensor] = None
        self._model = None

    # ------------------------------------------------------------ training
    def fit(
        self,
        data: Union[str, Path, InteractionData],
        out_dir: Optional[Union[str, Path]] = None,
        resume: bool = False,
        progress: bool = True,
        overwrite: bool = False,
    ) -> dict:
        """Train on ``data`` and return the test metrics of the reported weights.

        Args:
            data: an :class:`~hqgnn.data.InteractionData`, or what the setting ``data`` takes
                (a LightGCN folder, a table file, ``"synthetic"``), loaded with the config's
                preprocessing and split settings (:func:`prepare_data`).
            out_dir: the run folder to write (:mod:`hqgnn.runs`); None writes nothing.
            resume: continue the run in ``out_dir`` from its ``checkpoint.pt`` (same settings
                but the budgets), instead of starting afresh (from ``from_run``'s E^0 when set).
            progress: show a progress bar.
            overwrite: remove what an earlier run left in ``out_dir`` first
                (:func:`hqgnn.runs.clear_run`); without it, a folder holding a finished run
                (``metrics.json``) or an unfinished one (``checkpoint.pt``) is refused unless ``resume``.

        Returns: ``{"recall@K", "ndcg@K", "precision@K", "hit_rate@K" for K in ks, "split",
        "test_users", "model", "epochs", "train_seconds", "selected_by", "bits", "dim", ...}``
        (what ``metrics.json`` holds).

        Raises: :class:`~hqgnn.errors.DataError` (data that cannot be trained on),
        :class:`~hqgnn.errors.CheckpointError` (nothing to resume, a checkpoint or ``from_run``
        that does not fit), :class:`~hqgnn.errors.TrainingDiverged` (NaN / inf).
        """
        from .training import Trainer  # the trainer is imported to train, never to load

        if resume and (out_dir is None or not (Path(out_dir) / CHECKPOINT).is_file()):
            raise CheckpointError(f"{out_dir}: nothing to resume (no {CHECKPOINT})")
        if out_dir is not None and not resume:
            if overwrite:
                clear_run(Path(out_dir))
            else:
                held = next((f for f in (METRICS, CHECKPOINT) if (Path(out_dir) / f).is_file()), None)
                if held:
                    state = "a finished run" if held == METRICS else "an unfinished run's checkpoint"
                    raise CheckpointError(f"{out_dir}: holds {state} ({held}): fit(..., resume=True) to continue it, "
                                          f"or overwrite=True to train afresh")
        if resume and getattr(self, "_budget", None) is None and out_dir is not None and not getattr(self, "_record_applied", False):
            record = RunFolder(out_dir).read_budget()  # a budget run resumed without its budget: the recorded code
            if record is not None:
                from .frontier import apply_recorded

                self.cfg = apply_recorded(self.cfg, record, flag="budget_bytes")
        if getattr(self, "_budget", None) is not None:  # the frontier of the data trained on, and a resumed run's recorded pick
            self._pick_budget(data.name if isinstance(data, InteractionData) else str(data),
                              RunFolder(out_dir).read_budget() if resume else None)
        if isinstance(data, InteractionData):
            self.data = data
        else:
            self.cfg = self.cfg.updated({"data": str(data)}, "fit()")
            self.data = prepare_data(self.cfg)
        if self.budget_pick is not None and out_dir is not None and not resume:
            from .frontier import budget_record

            RunFolder(out_dir).write_budget(budget_record(self.budget_pick, self.cfg))
        use_threads(self.cfg.threads)
        # a resumed run takes E0 from its checkpoint, not from the run it started from
        model = build_model(self.cfg, self.data.n_users, self.data.n_items) if resume else initial_model(self.cfg, self.data)
        self.trainer = Trainer(self.cfg, model, self.data, out_dir, progress=progress)
        self._model, self.adj = self.trainer.model, self.trainer.adj
        if resume:
            self.trainer.resume()
        self.metrics = self.trainer.fit()
        return self.metrics

    def _pick_budget(self, data: Optional[str], record: Optional[dict] = None) -> None:
        """``cfg`` and ``budget_pick`` for the budget: the frontier of ``data`` (a data set's name
        or path; None: the settings' ``data``), or the pick a resumed run recorded."""
        from .frontier import apply_budget, apply_recorded, dataset_of

        base, budget, kw = self._budget
        self.cfg, self.budget_pick = apply_budget(base, budget, dataset=None if data is None else dataset_of(data), **kw)
        if record is not None:
            self.cfg = apply_recorded(base, record, budget=budget, **kw)

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: Union[str, Path], data: Optional[Union[str, InteractionData]] = None, device: str = "cpu") -> "Recommender":
        """The trained model of a run folder, ready to evaluate and recommend (no trainer is built).

        Args:
            run_dir: a run folder written by :meth:`fit` / ``hqgnn train`` (this version's or an
                older one's: old spellings of its ``config.yaml`` are read, :class:`~hqgnn.config.Config`).
            data: the run's data: an :class:`~hqgnn.data.InteractionData`, or a path when it
                moved; None reloads what the run's config names.
            device: where the model runs (``"cpu"``, ``"cuda"``, ``"auto"``).

        An exported artifact (``*.hqgnn``) is refused with a :class:`~hqgnn.errors.CheckpointError`
        that says so: recommend from it with :class:`hqgnn.index.recommender.ArtifactRecommender`.

        Raises: :class:`~hqgnn.errors.CheckpointError` when ``run_dir`` is no run folder, its
        ``model.pt`` is missing, damaged, holds NaN / inf, does not match the config, or was
        trained on other data than ``data``; :class:`~hqgnn.errors.DataError` for the data.
        """
        run = load_run(run_dir, data=data, device=device)
        obj = cls.__new__(cls)
        obj.cfg, obj.data, obj._model, obj.adj, obj.metrics = run.cfg, run.data, run.model, run.adj, run.metrics
        obj.trainer = None
        return obj

    def save(self, run_dir: Union[str, Path]) -> None:
        """Write the model to the run folder ``run_dir``: ``config.yaml``, ``model.pt`` (the
        weights), ``data.json``, and ``metrics.json`` when the metrics are known (from
        :meth:`fit`, or the loaded run's). Evaluates nothing: :meth:`load` reads it back.

        Raises :class:`~hqgnn.errors.CheckpointError` (writing no weights) when a weight is NaN / inf."""
        self._need_model()
        run = RunFolder(run_dir)
        run.write_config(self.cfg)
        run.write_model(self.cfg.to_dict(), self._model.state_dict(), self.data)
        run.write_data(self.data)
        if self.metrics is not None:
            run.write_metrics(self.metrics)

    # ------------------------------------------------------------ use
    def _need_model(self) -> None:
        if self._model is None:
            raise ConfigError("the model is not trained: call fit() or Recommender.load()")

    @property
    def model(self):
        """The trained model (:class:`~hqgnn.models.ScoringModel`); ConfigError before fit / load."""
        self._need_model()
        return self._model

    def evaluate(self, split: str = "test", ks: Optional[Sequence[int]] = None) -> dict:
        """Full-ranking metrics of the model on ``split`` (``"test"`` or ``"valid"``), with the
        protocol's masking (:func:`hqgnn.evaluation.excluded_for`: training items, and validation
        items when scoring test).

        ``ks``: the cut-offs, 1 .. the number of items (default: the config's). Returns ``{"recall@K", "ndcg@K",
        "precision@K", "hit_rate@K" for K in ks, "users", "split"}``, averaged over the users
        with a ``split`` item. Raises :class:`~hqgnn.errors.ConfigError` (bad ``ks``, no model),
        :class:`~hqgnn.errors.DataError` (no such split, or no user in it),
        :class:`~hqgnn.errors.NonFiniteScores`."""
        from .evaluation import check_cutoffs, evaluate_model

        self._need_model()
        cfg = self.cfg
        if ks is not None:
            if not ks or any(int(k) < 1 for k in ks):
                raise ConfigError(f"ks={list(ks)!r}: expected integers >= 1")
            check_cutoffs(ks, self.data.n_items, f"ks={list(ks)!r}")
            ks = [int(k) for k in ks]
        else:
            check_cutoffs(cfg.ks, self.data.n_items, hint="pass ks=")
        out = evaluate_model(self._model, self.adj, self.data, split, ks=ks or cfg.ks, batch_size=cfg.eval_batch_size)
        out["split"] = split
        return out

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scoring embeddings ``(n_users, d')`` and ``(n_items, d')`` (dequantized for quantized models)."""
        self._need_model()
        return self._model.eval_embeddings(self.adj)

    def user_index(self, user_ids: Sequence) -> np.ndarray:
        """Dense indices of original user ids."""
        from .index.engine import IdMap  # the same id lookup as the retrieval engine

        return IdMap(self.data.original_user_ids(), self.data.n_users, "user").to_index(user_ids)

    def index(self, backend: str = "exact", **backend_params):
        """The retrieval index that :meth:`recommend` answers from, built in memory once.

        It holds exactly what :func:`hqgnn.export.export_run` writes to an artifact
        (:func:`hqgnn.loading.build_index`: the model's codes, the original ids, and the seen
        items of :func:`hqgnn.evaluation.seen_items`), so the API, the CLI, the artifact engine
        and the HTTP server give one answer. Cached: rebuilt only when the model, its
        graph or any of its weights change (a new ``fit``, ``load``, or edited weights);
        building propagates the graph once, a cached answer not at all.

        ``backend`` (``"exact"``; ``"cascade"`` for b-bit codes; ``"faiss-*"`` as the engine's
        ``backend=``) and its ``backend_params`` (``candidates=C`` for ``"cascade"``): a view
        of the same index searched that way (``index.with_backend``, :func:`hqgnn.index.backends.with_backend`),
        kept with it. Raises :class:`~hqgnn.errors.ConfigError` for a backend the index cannot use.
        """
        self._need_model()
        key = self._index_key()
        cached = getattr(self, "_index_cache", None)
        if cached is None or cached[0] != key:
            model, adj, data = self._model, self.adj, self.data
            index = build_index(model, adj, data, self.cfg.model)
            # the key after building (calibrated scales are rewritten); holding the model, graph and
            # data keeps their ids from being reused by new objects while the key names them
            cached = self._index_cache = (self._index_key(), index, (model, adj, data), {})
        index, views = cached[1], cached[3]
        if backend == "exact" and not backend_params:
            return index
        view_key = (backend, tuple(sorted(backend_params.items())))
        if view_key not in views:
            views[view_key] = index.with_backend(backend, **backend_params)
        return views[view_key]

    def _index_key(self) -> tuple:
        model, adj = self._model, self.adj
        tensors = model.state_dict(keep_vars=True).values()
        return id(model), id(adj), id(self.data), tuple((id(t), t._version) for t in tensors)

    def recommend(self, user_ids: Sequence, k: int = 10, exclude_seen: bool = True, backend: str = "exact",
                  **backend_params) -> Recommendations:
        """Top-k original item ids and model scores for each original user id, best first.

        Answered by the artifact engine (:meth:`index`): the same items and scores as
        ``hqgnn recommend`` / the HTTP server on the run's exported artifact. Seen items
        (``exclude_seen``) are training + validation interactions
        (:func:`hqgnn.evaluation.seen_items`). Ties go to the lower item index.

        Args:
            user_ids: original user ids (a sequence or array of ``q`` ids, or one id).
            k: how many items per user, 1 .. n_items.
            exclude_seen: leave out each user's seen items.
            backend, backend_params: how the index is searched (:meth:`index`), e.g.
                ``backend="cascade", candidates=500``; the default is exact.

        Returns :class:`~hqgnn.index.results.Recommendations`, the one result type of every
        ``recommend`` (engine, artifact, CLI, HTTP): it unpacks as ``items, scores``, each of
        shape ``(len(user_ids), k)`` (``scores`` are the model's, dequantized; the index's
        integer inner products are ``raw_scores``). **Fewer than k:** a user with fewer
        than ``k`` eligible (unseen) items gets them all, best first, then padding: item id
        ``-1`` (``""`` where item ids are strings) with score ``-inf``. ``result.found[r]`` is how many
        real items row ``r`` holds and ``result.valid`` is the ``(q, k)`` mask of them.

        Raises :class:`~hqgnn.errors.DataError` for ``k`` not an integer in 1 .. n_items, and the
        engine's error naming an unknown user id or ``user_ids`` deeper than 1-d; :class:`~hqgnn.errors.ConfigError` before fit / load.
        """
        self._need_model()
        n_items = self.data.n_items
        from .index.errors import RetrievalError
        from .index.ids import check_k, id_array

        try:
            k = check_k(k, n_items)  # recommend_all's rule and wording, raised as this method's DataError
        except RetrievalError as exc:
            raise DataError(str(exc)) from None
        users = id_array(user_ids, "user_ids", "user")  # [[0, 1]]: one line naming the shape, not numpy's error
        return self.index(backend, **backend_params).recommend(users, k=k, exclude_seen=exclude_seen)


#: the name :meth:`Recommender.recommend`'s result had before it became the engine's
#: :class:`~hqgnn.index.results.Recommendations` (which still unpacks as ``items, scores``)
TopK = Recommendations


__all__ = ["Recommender", "TopK", "prepare_data", "SYNTHETIC", "resolve_device"]
