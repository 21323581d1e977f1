"""The generic training loop: a module whose trainable parameters are some subset, an objective over a batch.

    trainer = Trainer(loop_cfg, model, CausalLMObjective(), MixBatches(mix, 1, 8, pad_id))
    result = trainer.train()          # resumes from OUTPUT/checkpoints/latest.json when there is one

Per optimizer step: every rank takes its micro-batches of the global batch, divides each micro-batch's loss
*sum* by the number of targets in the whole global batch and backpropagates; gradients are summed over
ranks, clipped, and AdamW + the LR schedule step. The result equals a single-process run with the same
global batch. Logs go to the console (progress bar with ETA) and OUTPUT/train_log.jsonl.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from selfctx import config as config_mod
from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic, write_jsonl_atomic
from selfctx.progress import progress_bar
from selfctx.train import checkpoint as ckpt
from selfctx.train.config import DataConfig, LoopConfig
from selfctx.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_params,
    sum_gradients,
)
from selfctx.train.objective import Objective

LOG_FILE = "train_log.jsonl"
RUN_CONFIG_FILE = "train_config.json"
# What may change between sittings of one run: where it lives, the machine it runs on, how it is watched and
# when this sitting stops. Everything else (model, data, objective, schedule...) is the run itself.
SITTING_SETTINGS = frozenset(
    f"loop.{key}"
    for key in (
        "output_dir",
        "device",
        "time_limit_s",
        "stop_at_step",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "tensorboard",
    )
)


class BatchSource(Protocol):
    def samples_per_step(self, world: int) -> int: ...

    def micro_batches(self, step: int, rank: int, world: int, device: Any) -> list[dict[str, Any]]: ...


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # per optimizer step run by this call
    resumed_from: int | None


def check_before_loading(
    model_name: str, loop: LoopConfig, data: DataConfig | None = None, *, where: str = ""
) -> None:
    """A run's model spec, device, output folder and data paths, checked before the base model loads and
    before anything is written (`where` prefixes the config keys named)."""
    from selfctx.checks import check_device, check_out_folder
    from selfctx.models import resolve_model
    from selfctx.train.data import check_sources

    check_device(loop.device, f"{where}loop.device")
    check_out_folder(Path(loop.output_dir), f"{where}loop.output_dir")
    resolve_model(model_name)
    if data is not None:
        check_sources(data)


def check_same_settings(run_dir: Path, run_config: Any, may_change: frozenset[str] = frozenset()) -> None:
    """Refuse to resume a run in `run_dir` with other settings than it was trained with (one result folder,
    one run). Settings absent from either side (written by an older or newer version) are not compared."""
    saved = run_dir / RUN_CONFIG_FILE
    if ckpt.latest(run_dir) is None or not saved.is_file():
        return
    before = _flatten(json.loads(saved.read_text()))
    now = _flatten(json.loads(json.dumps(config_mod.to_dict(run_config))))
    allowed = SITTING_SETTINGS | may_change
    changed = [k for k in sorted(before.keys() & now.keys()) if before[k] != now[k] and k not in allowed]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise SelfctxError(
            f"{run_dir} was trained with {key}={before[key]!r}, this command has {now[key]!r}{more}: resume "
            f"with the run's settings ({saved}) or train into a new loop.output_dir"
        )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as {"a.b[0].c": leaf}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, inner in enumerate(value):
            out.update(_flatten(inner, f"{prefix}[{i}]"))
        out[f"{prefix}.len"] = len(value)
        return out
    return {prefix: value}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or this process's resident set size on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise SelfctxError("the model has no trainable parameters: enable LoRA or unfreeze some weights")
    return params


def lr_factor(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step.

    Warmup rises linearly from 1/(warmup+1) to 1 (transformers' starts at 0, which makes the first optimizer
    step a no-op), then `cosine` or `linear` decay to 0 at `total`, or `constant`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


class Trainer:
    def __init__(
        self,
        cfg: LoopConfig,
        model: nn.Module,
        objective: Objective,
        batches: BatchSource,
        *,
        dist_info: DistInfo | None = None,
        run_config: Any = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.objective = objective
        self.batches = batches
        self.dist = dist_info or DistInfo()
        self.output_dir = Path(cfg.output_dir)
        self.device = next(model.parameters()).device
        self.params = _trainable(model)
        self.on_step = on_step
        self.run_config = run_config
        opt = cfg.optim
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(opt.scheduler, opt.warmup_steps, cfg.max_steps)
        )

    # ------------------------------------------------------------------------------------------ checkpoints

    def _save(self, step: int, state: dict[str, Any]) -> None:
        barrier(self.dist)
        tmp = ckpt.checkpoint_dir(self.output_dir, step).with_suffix(".tmp")
        if self.dist.is_main:
            ckpt.begin(self.output_dir, step)
        barrier(self.dist)
        ckpt.write_rank_rng(tmp, self.dist.rank)
        barrier(self.dist)
        if self.dist.is_main:
            ckpt.finish(
                self.output_dir,
                tmp,
                step,
                dict(self.params),
                self.optimizer,
                self.scheduler,
                state,
                self.cfg.keep_checkpoints,
            )
        barrier(self.dist)

    def _resume(self) -> dict[str, Any] | None:
        path = ckpt.latest(self.output_dir)
        if path is None:
            self._trim_log(0)  # rows of a start that never reached a checkpoint are redone
            return None
        state = ckpt.load(path, self.dist.rank, self.params, self.optimizer, self.scheduler)
        if state["samples_per_step"] != self.batches.samples_per_step(self.dist.world):
            raise SelfctxError(
                f"{path} was written with {state['samples_per_step']} samples per step, this run has "
                f"{self.batches.samples_per_step(self.dist.world)}: keep the batch geometry or use a new "
                "output_dir"
            )
        self._trim_log(int(state["step"]))
        return state

    def _trim_log(self, last_step: int) -> None:
        """Keep one log row per step up to `last_step` (the latest written of each): the steps after the
        checkpoint will be redone, and a step redone after an earlier kill must not count twice."""
        log = self.output_dir / LOG_FILE
        if not self.dist.is_main or not log.is_file():
            return
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        latest = {r["step"]: r for r in rows if r["step"] <= last_step}
        if len(latest) != len(rows):
            write_jsonl_atomic(log, [latest[step] for step in sorted(latest)])

    # ---------------------------------------------------------------------------------------------- steps

    def _step(self, step: int) -> tuple[float, int, float]:
        """One optimizer step; returns (mean loss over the global batch, tokens processed, grad norm)."""
        micro = self.batches.micro_batches(step, self.dist.rank, self.dist.world, self.device)
        local = torch.tensor(
            [
                float(sum(self.objective.targets(b) for b in micro)),
                float(sum(int(b["attention_mask"].sum()) for b in micro))
                if "attention_mask" in micro[0]
                else 0.0,
            ],
            dtype=torch.float64,
            device=self.device,
        )
        n_targets, n_tokens = all_reduce_sum(local, self.dist).tolist()
        if n_targets == 0:
            raise SelfctxError(f"step {step}: the global batch has no loss targets: check the data's labels")
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in micro:
            loss = self.objective(self.model, batch)
            (loss / n_targets).backward()
            loss_sum += loss.detach().double()
        params = list(self.params.values())
        sum_gradients(params, self.dist)
        grads = [p for p in params if p.grad is not None]
        if self.cfg.optim.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(grads, self.cfg.optim.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([g.grad.norm() for g in grads])))  # type: ignore[union-attr]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = float(all_reduce_sum(loss_sum, self.dist))
        return total / n_targets, int(n_tokens), norm

    def _out_of_time(self, sitting: float) -> bool:
        """cfg.time_limit_s has passed since `sitting` — on any rank, so all ranks stop at the same step."""
        limit = self.cfg.time_limit_s
        if limit is None:
            return False
        late = float(time.perf_counter() - sitting >= limit)
        flag = torch.tensor(late, dtype=torch.float64, device=self.device)
        return float(all_reduce_sum(flag, self.dist)) > 0

    def train(self, stop_after: int | None = None) -> TrainResult:
        """Train to cfg.max_steps (cfg.stop_at_step if set; or stop after step `stop_after` without a
        checkpoint, as a kill would: tests), resuming if possible."""
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        broadcast_params(list(self.params.values()), self.dist)
        state = self._resume()
        step = int(state["step"]) if state else 0
        samples = int(state["samples_seen"]) if state else 0
        tokens_total = int(state["tokens_seen"]) if state else 0
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.run_config is not None:
                write_json_atomic(self.output_dir / RUN_CONFIG_FILE, config_mod.to_dict(self.run_config))
        self.model.train()
        losses: list[float] = []
        bar = progress_bar(desc="train", total=cfg.max_steps, unit="step") if self.dist.is_main else None
        if bar is not None:
            bar.update(step)
        log = (self.output_dir / LOG_FILE).open("a", encoding="utf-8") if self.dist.is_main else None
        board = _tensorboard(self.output_dir) if cfg.tensorboard and self.dist.is_main else None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        sitting = time.perf_counter()
        last = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        try:
            while step < last:
                started = time.perf_counter()
                lr = self.scheduler.get_last_lr()[0]
                loss, n_tokens, norm = self._step(step)
                metrics = getattr(self.objective, "step_metrics", None)
                extra = metrics() if callable(metrics) else {}  # the objective's own terms, e.g. lm and kl
                elapsed = time.perf_counter() - started
                step += 1
                samples += self.batches.samples_per_step(self.dist.world)
                tokens_total += n_tokens
                losses.append(loss)
                if not math.isfinite(loss):
                    raise SelfctxError(f"loss became {loss} at step {step}: lower optim.lr or check the data")
                if log is not None and (step % cfg.log_every == 0 or step == last):
                    row = {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": norm,
                        "tokens": n_tokens,
                        "tokens_per_s": n_tokens / elapsed,
                        "step_s": elapsed,
                        "memory_mb": memory_mb(self.device),
                        "samples_seen": samples,
                        "time": time.time(),
                    }
                    row.update(extra)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    if board is not None:
                        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "memory_mb"):
                            board.add_scalar(f"train/{key}", row[key], step)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / elapsed:.0f}")
                    bar.update(1)
                if self.on_step is not None:
                    self.on_step(step, loss)
                out_of_time = self._out_of_time(sitting)
                if step % cfg.save_every == 0 or step == last or out_of_time:
                    self._save(
                        step,
                        {
                            "step": step,
                            "samples_seen": samples,
                            "tokens_seen": tokens_total,
                            "samples_per_step": self.batches.samples_per_step(self.dist.world),
                            "world": self.dist.world,
                        },
                    )
                if out_of_time or (stop_after is not None and step >= stop_after):
                    break
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if board is not None:
                board.close()
        return TrainResult(step=step, losses=losses, resumed_from=int(state["step"]) if state else None)


def _tensorboard(output_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SelfctxError(
            "loop.tensorboard=true needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))
