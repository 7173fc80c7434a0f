"""What the scheduler hands a run's workers: the run's stored model and options, made into a
WorkerJob (jobs.training.config) for rank 0 of 1; the scheduler sets each rank's place."""

from __future__ import annotations

from cluster.core.store import Store
from jobs.datasets import state as datasets
from jobs.models import state as models
from jobs.training.config import TrainConfig, WorkerJob


def worker_job(store: Store, run: models.Run, model: models.Model, resume: bool) -> WorkerJob:
    """The run's job; a linked dataset goes as its link (the worker resolves it)."""
    o = model.options
    urls: dict[str, str | None] = {}
    links: dict[str, str | None] = {}
    for role, dataset_id in (("train", model.train_dataset_id), ("valid", model.valid_dataset_id)):
        urls[role] = links[role] = None
        if dataset_id is None:
            continue
        ds = datasets.get(store, run.tenant, dataset_id)
        if ds.source == "link" and ds.link_url:
            links[role] = ds.link_url
        else:
            urls[role] = ds.url
    cfg = TrainConfig(
        spec_name=model.spec_name,
        spec_text=model.spec_text,
        train_url=urls["train"] or "",
        valid_url=urls["valid"],
        validation_percent=o.validation_percent,
        epochs=run.epochs,
        batch_size=o.batch_size,
        run_url=model.url,
        checkpoint_every=o.checkpoint_every,
        keep_checkpoints=o.keep_checkpoints,
        resume=resume,
        resume_epoch=run.resume_epoch if run.restarts == 0 else None,
        gpus=o.gpus,
        seed=o.seed,
    )
    return WorkerJob(cfg, train_link=links["train"], valid_link=links["valid"])
