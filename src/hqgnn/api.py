"""The Python API: a recommender object with fit / evaluate / recommend / save / load.

    >>> from hqgnn import Recommender
    >>> rec = Recommender(model="hqgnn", bits=4, epochs=50)
    >>> metrics = rec.fit("synthetic", out_dir="runs/demo")
    >>> items, scores = rec.recommend([0, 1], k=10)
    >>> rec2 = Recommender.load("runs/demo")

``fit`` writes a run folder (see ``hqgnn.training``) when ``out_dir`` is given;
``load`` reads one back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .config import Config
from .data import SYNTHETIC, InteractionData, load_dataset, with_validation
from .errors import CheckpointError, ConfigError, DataError
from .evaluation import csr_rows_to_dense_mask, rank_top_k
from .training import Trainer, evaluate_model, load_checkpoint, resolve_device


def prepare_data(cfg: Config, spec: Optional[str] = None) -> InteractionData:
    """Load the data a config names and carve its validation split (seeded)."""
    spec = spec or cfg.data
    if not spec:
        raise ConfigError("setting data is missing: pass --data PATH (a LightGCN folder, a table file, or synthetic)")
    data = load_dataset(
        spec,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
        user_column=cfg.user_column,
        item_column=cfg.item_column,
        synthetic_options={"n_users": cfg.synthetic_users, "n_items": cfg.synthetic_items, "seed": cfg.synthetic_seed},
    )
    return with_validation(data, cfg.val_fraction, cfg.split_seed)


class Recommender:
    """A trained (or trainable) model with its data, in the shape of ``implicit``'s models."""

    def __init__(self, model: str = "lightgcn", config: Optional[Union[str, Config]] = None, **settings):
        if isinstance(config, Config):
            base = config
        else:
            base = Config.load(config) if config else Config()
        self.cfg = base.updated({"model": model, **settings}, "Recommender()").validate()
        self.trainer: Optional[Trainer] = None
        self.data: Optional[InteractionData] = None
        self.metrics: Optional[dict] = None

    # ------------------------------------------------------------ training
    def fit(
        self,
        data: Union[str, Path, InteractionData],
        out_dir: Optional[Union[str, Path]] = None,
        resume: bool = False,
        progress: bool = True,
    ) -> dict:
        if isinstance(data, InteractionData):
            self.data = data
        else:
            self.cfg = self.cfg.updated({"data": str(data)}, "fit()")
            self.data = prepare_data(self.cfg)
        # a resumed run takes E0 from its checkpoint, not from the run it started from
        self.trainer = Trainer(self.cfg, self.data, out_dir, progress=progress, start_from_run=not resume)
        if resume:
            if out_dir is None or not (Path(out_dir) / "checkpoint.pt").is_file():
                raise CheckpointError(f"{out_dir}: nothing to resume (no checkpoint.pt)")
            self.trainer.resume()
        self.metrics = self.trainer.fit()
        return self.metrics

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: Union[str, Path], data: Optional[Union[str, InteractionData]] = None, device: str = "cpu") -> "Recommender":
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
        cfg = Config.load(cfg_path).updated({"device": device}, "load()")
        state = load_checkpoint(run_dir / "model.pt")
        obj = cls.__new__(cls)
        obj.cfg = cfg
        obj.data = data if isinstance(data, InteractionData) else prepare_data(cfg, data)
        if state["data_fingerprint"] != obj.data.fingerprint():
            raise CheckpointError(
                f"{run_dir / 'model.pt'}: trained on other data (fingerprint {state['data_fingerprint']}, "
                f"given data {obj.data.fingerprint()})"
            )
        obj.trainer = Trainer(cfg, obj.data, None, progress=False, start_from_run=False)
        try:
            obj.trainer.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{run_dir / 'model.pt'}: does not match its config: {str(exc).splitlines()[0]}") from None
        obj.metrics = None
        return obj

    def save(self, run_dir: Union[str, Path]) -> None:
        """Write the run folder (config, weights, metrics) to ``run_dir``."""
        self._need_model()
        self.trainer.out_dir = Path(run_dir)
        self.trainer.out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.trainer.out_dir / "config.yaml")
        self.metrics = self.trainer.finish()

    # ------------------------------------------------------------ use
    def _need_model(self) -> None:
        if self.trainer is None:
            raise ConfigError("the model is not trained: call fit() or Recommender.load()")

    @property
    def model(self):
        self._need_model()
        return self.trainer.model

    def evaluate(self, split: str = "test", ks: Optional[Sequence[int]] = None) -> dict:
        self._need_model()
        cfg = self.cfg
        if ks is not None:
            if not ks or any(int(k) < 1 for k in ks):
                raise ConfigError(f"ks={list(ks)!r}: expected integers >= 1")
            cfg = dataclasses.replace(cfg, ks=[int(k) for k in ks])
        out = evaluate_model(self.trainer.model, self.trainer.adj, self.data, split, cfg)
        out["split"] = split
        return out

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scoring embeddings (dequantized for quantized models)."""
        self._need_model()
        return self.trainer.model.eval_embeddings(self.trainer.adj)

    def user_index(self, user_ids: Sequence) -> np.ndarray:
        """Dense indices of original user ids."""
        from .index.engine import IdMap  # the same id lookup as the retrieval engine

        return IdMap(self.data.original_user_ids(), self.data.n_users, "user").to_index(user_ids)

    def recommend(self, user_ids: Sequence, k: int = 10, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k original item ids and scores for each original user id."""
        self._need_model()
        n_items = self.data.n_items
        if not 1 <= k <= n_items:
            raise DataError(f"k={k} is out of range: expected 1 .. {n_items}")
        idx = self.user_index(user_ids)
        rows = torch.from_numpy(idx)
        # rank as evaluation and the retrieval engine do (integer codes, ties to the lower item index) ...
        ru, ri, integer = self.trainer.model.ranking_embeddings(self.trainer.adj)
        ranking = ru[rows] @ ri.t()
        mask = csr_rows_to_dense_mask(self.data.train, idx, ranking.device) if exclude_seen else None
        top = rank_top_k(ranking, mask, k, integer)
        # ... and report the model's (dequantized) scores
        u, i = self.embeddings()
        top_scores = torch.gather(u[rows] @ i.t(), 1, top)
        return self.data.original_item_ids()[top.cpu().numpy()], top_scores.cpu().numpy()


__all__ = ["Recommender", "prepare_data", "SYNTHETIC", "resolve_device"]
