"""The training loop of one rank: a dataset in; epoch metrics, checkpoints and a model out."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cluster.core import storage
from jobs.datasets.loader import ShardLoader
from jobs.datasets.transforms import ImageTransform
from jobs.models import checkpoints
from jobs.models.specs import build, parse_spec
from jobs.sandbox.collective import (
    Collective,
    TorchCollective,
    average_gradients,
    broadcast_module,
)
from jobs.training.config import Reporter, TrainConfig, check
from jobs.training.data import Batch, StartedPass, input_shape, label_map, num_classes, on_device
from ncloud import training as custom_metrics
from ncloud.errors import InvalidInput

PROGRESS_EVERY_S = 0.5
STOP_VOTE_EVERY = 8  # batches between the ranks' votes on stopping (a collective each)
# A pass whose batches fit in this many bytes, and whose transform draws no random numbers,
# is kept in memory (on the device) after its first epoch and only reshuffled after that
# (each rank keeps the share it streamed first).
KEEP_BYTES = 256 << 20


def _check_config(cfg: TrainConfig, collective: Collective | None) -> None:
    check(cfg, collective is not None)
    if cfg.gpus < 0 or (cfg.gpus and not torch.cuda.is_available()):
        raise InvalidInput(f"{cfg.gpus} GPUs asked for, but this worker sees no CUDA device")


def _write(url: str, data: bytes) -> None:
    storage.write_stream(url, [data], checkpoints.NO_LIMIT)


class _Run:
    """One rank's run: the data, the built spec, and where it is."""

    def __init__(
        self,
        cfg: TrainConfig,
        reporter: Reporter,
        should_stop: Callable[[], bool],
        collective: Collective | None,
    ):
        self.cfg, self.reporter, self.should_stop = cfg, reporter, should_stop
        self.lead, self.collective = cfg.rank == 0, collective
        self.distributed = collective is not None
        cuda = torch.device("cuda", torch.cuda.current_device()) if cfg.gpus else None
        self.device = cuda or torch.device("cpu")
        spec = parse_spec(cfg.spec_name, cfg.spec_text)
        hold_out = cfg.validation_percent
        train_rows = (0.0, 1.0 - hold_out) if hold_out else None

        def loader(url: str, train: bool, rows: tuple[float, float] | None) -> ShardLoader:
            return ShardLoader(
                url,
                cfg.rank,
                cfg.world_size,
                cfg.batch_size,
                shuffle_seed=cfg.seed if train else None,
                transform=spec.transform,
                cache_dir=cfg.cache_dir,
                train=train,
                rows=rows,
            )

        self.train_data = loader(cfg.train_url, True, train_rows)
        if not self.train_data.rows:
            raise InvalidInput(f"the training dataset {cfg.train_url} has no rows to train on")
        self.classes = num_classes(self.train_data.index)
        self.valid_data: ShardLoader | None = None
        self.label_map: torch.Tensor | None = None
        if cfg.valid_url:
            self.valid_data = loader(cfg.valid_url, False, None)
            lut = label_map(self.train_data.index, self.valid_data.index, self.classes)
            self.label_map = lut.to(self.device) if lut is not None else None
        elif hold_out:
            self.valid_data = loader(cfg.train_url, False, (1.0 - hold_out, 1.0))
        self.shape = input_shape(self.valid_data or self.train_data, spec.transform)
        built = build(spec, self.classes, self.shape)
        self.model = built.model.to(self.device)
        self.optimizer, self.scheduler = built.optimizer, built.scheduler
        self.loss = built.loss.to(self.device) if isinstance(built.loss, nn.Module) else built.loss
        self.epochs_done, self.metrics = self._resume()
        self.ahead: dict[str, StartedPass] = {}  # passes begun early: "train", "valid"
        self.kept: dict[str, Batch] = {}  # whole passes held in memory (see KEEP_BYTES)
        if collective is not None:  # every rank starts from rank 0's weights
            broadcast_module(collective, self.model)
        if self.lead and cfg.run_url:
            meta = {
                "spec": spec.name,
                "num_classes": self.classes,
                "input_shape": list(self.shape),
                "classes": self.train_data.index.classes,
                "transform": spec.transform,
                "ends_in_softmax": built.ends_in_softmax,
                "kind": self.train_data.index.kind,
                "dataset_shape": list(self.train_data.index.shape or []) or None,
            }
            _write(storage.join(cfg.run_url, "meta.json"), json.dumps(meta, indent=1).encode())

    def _resume(self) -> tuple[int, dict[str, Any] | None]:
        """(epochs done, their last metrics) from the checkpoint to resume from, if any."""
        cfg = self.cfg
        if not cfg.resume and cfg.resume_epoch is None:
            return 0, None
        epoch, found = cfg.resume_epoch, None
        if epoch is None and self.lead:  # rank 0 picks; the others load the same one
            found = checkpoints.load_latest(cfg.run_url, skipped=self.reporter.log)
            epoch = found[0] if found is not None else -1
        epoch = self._agree(-1 if epoch is None else epoch)
        if epoch < 0:
            self.reporter.log("no checkpoint to resume from: starting at epoch 1")
            return 0, None
        state = found[1] if found is not None else checkpoints.load(cfg.run_url, epoch)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InvalidInput(f"checkpoint {epoch} does not fit this spec: {exc}") from exc
        rng = state.get("rng") or {}
        if isinstance(rng.get("torch"), torch.Tensor):
            torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and isinstance(rng.get("cuda"), torch.Tensor):
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.reporter.log(f"resumed from the checkpoint of epoch {epoch}")
        return epoch, state.get("metrics")

    def _agree(self, value: int) -> int:
        """Rank 0's value, on every rank."""
        if self.collective is None:
            return value
        return int(self.collective.broadcast(torch.tensor([float(value)])).item())

    def _stop_voted(self, batch: int, batches: int) -> bool:
        """Whether to stop now; with several ranks all vote at the same batches and agree."""
        if self.collective is None:
            return self.should_stop()
        if batch % STOP_VOTE_EVERY and batch != batches:
            return False
        flag = torch.tensor([1.0 if self.should_stop() else 0.0])
        return bool(self.collective.all_reduce(flag, "max").item())

    def _begin(self, name: str, loader: ShardLoader) -> None:
        if name not in self.ahead and name not in self.kept:
            self.ahead[name] = StartedPass(loader)

    def _begin_next_train(self, epoch: int) -> None:
        if epoch < self.cfg.epochs:
            self.train_data.set_epoch(epoch + 1)
            self._begin("train", self.train_data)

    def _batches(self, name: str, loader: ShardLoader, epoch: int) -> Iterator[Batch]:
        """One pass of a loader's batches on the device, from memory once it is kept there."""
        if name in self.kept:
            stale = self.ahead.pop(name, None)  # begun before the pass turned out to fit
            if stale is not None:
                stale.close()
            yield from self._kept_batches(self.kept[name], loader.shuffle_seed, epoch)
            return
        passing = self.ahead.pop(name, None) or StartedPass(loader)
        t = loader.transform
        random = loader.train and isinstance(t, ImageTransform) and (t.crop or t.pad or t.flip)
        keep: list[Batch] | None = None if random else []
        size = 0
        for x, y in on_device(passing, self.device):
            if keep is not None:
                size += x.nbytes + y.nbytes
                keep = keep if size <= KEEP_BYTES else None
                if keep is not None:
                    keep.append((x, y))
            yield x, y
        if keep and len({x.shape[1:] for x, _ in keep}) == 1:  # a whole pass, one shape
            self.kept[name] = (torch.cat([x for x, _ in keep]), torch.cat([y for _, y in keep]))

    def _kept_batches(self, kept: Batch, seed: int | None, epoch: int) -> Iterator[Batch]:
        x, y = kept
        size = self.cfg.batch_size
        if seed is None:
            for i in range(0, len(y), size):
                yield x[i : i + size], y[i : i + size]
            return
        mix = np.random.SeedSequence([seed, epoch, self.cfg.rank]).generate_state(1)[0]
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(mix)))
        order = order.to(self.device)
        for i in range(0, len(y), size):
            picked = order[i : i + size]
            yield x[picked], y[picked]

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            for started in self.ahead.values():
                started.close()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.lead:
            start, total = self.epochs_done + 1, cfg.epochs
            where = f"{cfg.world_size} workers on {self.device.type}"
            self.reporter.log(
                f"training {cfg.spec_name}: {self.train_data.rows} rows, {self.classes} classes, "
                f"input {list(self.shape)}, epochs {start}..{total}, {where}"
            )
        for epoch in range(self.epochs_done + 1, cfg.epochs + 1):
            started = time.perf_counter()
            train_sums, train_s = self._train_epoch(epoch)
            if train_sums is None:  # stopped half-way: keep what it learned, as epochs done
                self._checkpoint(epoch - 1, self.metrics)
                return {"status": "stopped", "epochs_done": epoch - 1, "metrics": self.metrics}
            sums = torch.cat([train_sums, self._validate(epoch)])
            if self.collective is not None:
                sums = self.collective.all_reduce(sums)
            loss, seen, valid_loss, correct, valid_n = sums.tolist()
            self.metrics = {
                "epoch": epoch,
                "train_loss": loss / max(seen, 1),
                "valid_loss": valid_loss / valid_n if valid_n else None,
                "valid_accuracy": correct / valid_n if valid_n else None,
                "samples_per_s": seen / max(train_s, 1e-9),
                "epoch_s": time.perf_counter() - started,
                **custom_metrics.take(),  # what the spec reported this epoch (ncloud.training)
            }
            self._step_schedule()
            self.epochs_done = epoch
            if self.lead:
                self.reporter.epoch(dict(self.metrics))
            stop = self._stop_voted(1, 1)
            if stop or epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                self._checkpoint(epoch, self.metrics)
            if stop:
                return {"status": "stopped", "epochs_done": epoch, "metrics": self.metrics}
        if self.lead and cfg.run_url:
            weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            _write(storage.join(cfg.run_url, "model.pt"), _saved(weights))
        return {"status": "completed", "epochs_done": self.epochs_done, "metrics": self.metrics}

    def _train_epoch(self, epoch: int) -> tuple[torch.Tensor | None, float]:
        """[loss sum, examples] of this rank's epoch and its seconds; None when stopped."""
        if "train" not in self.ahead:
            self.train_data.set_epoch(epoch)
        self.model.train()
        loss_sum, seen = torch.zeros((), dtype=torch.float64, device=self.device), 0
        batches = len(self.train_data)
        started = last = time.perf_counter()
        for b, (x, y) in enumerate(self._batches("train", self.train_data, epoch), 1):
            if b == batches:  # the loader is done: begin the next pass now, not after this
                if self.valid_data is not None:
                    self._begin("valid", self.valid_data)
                else:
                    self._begin_next_train(epoch)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(x), y)
            loss.backward()
            if self.collective is not None:
                average_gradients(self.collective, self.model)
            self.optimizer.step()
            loss_sum.add_(loss.detach(), alpha=y.shape[0])  # on the device: no sync per batch
            seen += y.shape[0]
            now = time.perf_counter()
            if self.lead and (now - last >= PROGRESS_EVERY_S or b == batches):
                cost = loss_sum.item() / seen
                self.reporter.progress(epoch, b, batches, cost, now - started)
                last = now
            if self._stop_voted(b, batches):
                return None, 0.0
        sums = torch.stack([loss_sum, loss_sum.new_tensor(float(seen))])
        return sums, time.perf_counter() - started

    def _validate(self, epoch: int) -> torch.Tensor:
        """[loss sum, correct, examples] over this rank's share of the validation rows."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self.valid_data is None:
            return sums
        passing = self._batches("valid", self.valid_data, epoch)
        self._begin_next_train(epoch)
        self.model.eval()
        with torch.no_grad():
            for x, y in passing:
                if self.label_map is not None:
                    y = self.label_map[y]
                out = self.model(x)
                sums[0] += self.loss(out, y) * y.shape[0]
                sums[1] += (out.argmax(1) == y).sum()
                sums[2] += y.shape[0]
        self.model.train()
        return sums

    def _step_schedule(self) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = self.metrics or {}
            self.scheduler.step(float(metric.get("valid_loss") or metric.get("train_loss") or 0))
        else:
            self.scheduler.step()

    def _checkpoint(self, epoch: int, metrics: dict[str, Any] | None) -> None:
        cfg = self.cfg
        if not self.lead or not cfg.run_url:
            return
        sched_state = getattr(self.scheduler, "state_dict", None)  # a .py spec's may lack one
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": sched_state() if callable(sched_state) else None,
            "epoch": epoch,
            "metrics": dict(metrics or {}),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
            },
        }
        index = checkpoints.save(cfg.run_url, epoch, state, metrics, cfg.keep_checkpoints)
        self.reporter.checkpoint(index)


def _saved(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def train(
    cfg: TrainConfig,
    reporter: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
    collective: Collective | None = None,
) -> dict[str, Any]:
    """Train one rank; {"status": "completed"|"stopped", "epochs_done", "metrics"}.

    With world_size > 1 the ranks average gradients through `collective` (a sandbox's
    pipe to its trusted worker), or, without one, through torch.distributed at dist_url.
    """
    _check_config(cfg, collective)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.gpus:
        torch.backends.cudnn.benchmark = True
    owned = cfg.world_size > 1 and collective is None
    if owned:
        dist.init_process_group(
            "gloo", init_method=cfg.dist_url, rank=cfg.rank, world_size=cfg.world_size
        )
        collective = TorchCollective(cfg.world_size)
    try:
        return _Run(cfg, reporter, should_stop, collective).run()
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
