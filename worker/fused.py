"""Fused trial packing: K trials of one study trained as one batched model on one device.

Every trial keeps what it would have alone: initial weights (seeded as ``train_trial`` seeds
them), data order, optimizer state and hyper-parameters, LR schedule (the catalogue's pure
formulas, plateau on its own metric) and its own end: a pruned or diverged trial is reported
and finished at once, and the stack is compacted at the end of that epoch so it stops costing
compute. A streaming task (``Task.train_batches`` overridden) is the exception to the data
order: its batches are drawn once per step for the whole pack, in the order of the pack's first
trial's seed, and every trial trains on the same batch (``train_trial(..., order_seed=)``
reproduces one of them alone).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap

from lrtune.space import TrialConfig
from lrtune_worker.blocking import block_size, blocks
from lrtune_worker.feed import Feed, MetricMean
from lrtune_worker.stacked_optim import StackedOptimizer
from lrtune_worker.tasks import Task
from lrtune_worker.tasks.base import Batch, metric_rows
from lrtune_worker.train import NullReporter, Reporter, TrainResult

NARROW = 32  # a Linear layer with fewer outputs than this is computed transposed
EVAL_CHUNK = 64  # trials evaluated at once (bounds the memory of validation outputs)
log = logging.getLogger("lrtune.worker")


def pack_key(config: TrialConfig, task: Task) -> tuple[str, int]:
    """Trials fuse only with the same optimizer kind and batch size."""
    return config.optimizer.name, config.batch_size or task.info.batch_size


def split_pack(configs: Sequence[TrialConfig], task: Task) -> list[list[int]]:
    groups: dict[tuple[str, int], list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(pack_key(config, task), []).append(i)
    return list(groups.values())


ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.Identity)


def is_plain_mlp(model: nn.Module) -> bool:
    """Linear layers and element-wise activations in a Sequential, no buffers."""
    return (isinstance(model, nn.Sequential) and not list(model.buffers())
            and all(isinstance(m, (nn.Linear, *ELEMENTWISE)) for m in model))


class _Pack:
    """The live rows of the stack: which trial each row is, and their state."""

    def __init__(self, task: Task, configs: Sequence[TrialConfig], seeds: Sequence[int],
                 device: torch.device, rows: Sequence[int] | None = None) -> None:
        models = []
        for seed in seeds:
            # the generator that initialises a model, as train_trial's torch.manual_seed
            # seeds it; torch.manual_seed itself also formats a traceback for each accelerator
            # not yet initialised (~0.3 ms a trial)
            torch.random.default_generator.manual_seed(seed)
            models.append(task.model())
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)  # type: ignore[arg-type]
        params = {n: p.to(device) for n, p in params.items()}  # one copy per stacked tensor
        buffers = {n: b.to(device) for n, b in buffers.items()}
        self.names = list(params)
        self.mlp = is_plain_mlp(self.base)
        # a narrow layer (few outputs) is computed transposed, its outputs as the rows of
        # the product: a batched GEMM with few columns runs several times slower
        self.narrow = {f"{i}.weight" for i, m in enumerate(self.base)
                       if isinstance(m, nn.Linear) and m.out_features < NARROW} \
            if self.mlp else set()
        if self.mlp:  # other weights as [K, in, out]: their gradient needs no transposed copy
            params = {n: p.transpose(1, 2).contiguous() if p.dim() == 3 and n not in self.narrow
                      else p for n, p in params.items()}
        self.params = [params[n].detach() for n in self.names]
        self.buffers = buffers
        # stack position -> index into the caller's lists; positions still training
        self.rows = list(rows) if rows is not None else list(range(len(configs)))
        self.live = list(range(len(configs)))
        self.loss = vmap(task.loss)
        self.shared_loss = vmap(task.loss, in_dims=(0, None))
        self.optimizer = StackedOptimizer(self.params, [c.optimizer for c in configs])

    def forward(self, x: Tensor, shared_input: bool = False, rows: slice = slice(None)
                ) -> Tensor:
        """Outputs of every trial (or the ``rows`` slice); ``x`` per trial or shared."""
        return self.apply(*self.chunk(rows), x, shared_input)

    def chunk(self, rows: slice) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The parameters and buffers of the trials at stack positions ``rows``."""
        return [p[rows] for p in self.params], {k: v[rows] for k, v in self.buffers.items()}

    def apply(self, params: Sequence[Tensor], buffers: dict[str, Tensor], x: Tensor,
              shared_input: bool = False) -> Tensor:
        def one(params: tuple[Tensor, ...], buffers: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(self.base, ({**dict(zip(self.names, params, strict=True)),
                                                **buffers}), (xb,))

        if self.mlp:
            return self._mlp(dict(zip(self.names, params, strict=True)), x, shared_input)
        return vmap(one, in_dims=(0, 0, None if shared_input else 0))(
            tuple(params), buffers, x)

    def _mlp(self, params: dict[str, Tensor], x: Tensor, shared_input: bool) -> Tensor:
        """A stack of Linear layers and element-wise activations, one batched matmul with its
        bias per layer (vmap's generic rule adds the bias in a second pass over the output);
        weights are stored ``[K, in, out]``, a narrow layer's ``[K, out, in]``."""
        k = params[self.names[0]].shape[0]
        h = x.expand(k, *x.shape) if shared_input else x
        for i, layer in enumerate(self.base):
            if isinstance(layer, nn.Linear):
                weight, bias = params[f"{i}.weight"], params.get(f"{i}.bias")
                if f"{i}.weight" in self.narrow:  # [K, out, in]: outputs^T = weight @ h^T
                    h = _affine(weight, h.transpose(1, 2), bias, 2).transpose(1, 2)
                else:
                    h = _affine(h, weight, bias, 1)
            else:
                h = layer(h)
        return h

    def loss_sum(self, params: list[Tensor], x: Tensor, y: Tensor, shared: bool = False
                 ) -> tuple[Tensor, Tensor]:
        """Summed loss of every trial (its gradient is each trial's own) and the losses;
        ``x, y`` per trial, or one batch ``shared`` by all."""
        loss = self.shared_loss if shared else self.loss
        losses = loss(self.apply(params, self.buffers, x, shared), y)
        return losses.sum(), losses.detach()

    def keep(self, rows: list[int]) -> None:
        """Compact the stack to the given positions."""
        index = torch.tensor(rows, device=self.params[0].device)
        self.params = [p[index] for p in self.params]
        self.buffers = {k: v[index] for k, v in self.buffers.items()}
        self.optimizer.select(index)
        self.rows = [self.rows[r] for r in rows]
        self.live = list(range(len(rows)))


def _affine(a: Tensor, b: Tensor, bias: Tensor | None, bias_dim: int) -> Tensor:
    """``a @ b`` batched, plus ``bias`` broadcast along ``bias_dim`` of the product."""
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias.unsqueeze(bias_dim), a, b)


def train_step(pack: _Pack, x: Tensor, y: Tensor, lr: Tensor, shared: bool = False) -> Tensor:
    """One optimizer step of every trial in the pack (on its own batch, or one ``shared``
    batch); returns each trial's batch loss."""
    grads, losses = grad(pack.loss_sum, has_aux=True)(pack.params, x, y, shared)
    pack.optimizer.step(lr, pack.params, grads)
    return losses


def compile_errors() -> tuple[type[Exception], ...]:
    """Compiling failed (no C++ compiler, no Triton, an unsupported op); an error of the step
    itself (out of memory, a bad shape) is none of these. Imported only when needed: the
    compiler's modules take a second to import."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError

    return TorchDynamoException, CppCompileError


class _Stepper:
    """Runs ``train_step`` eagerly, or compiled once ``compile()`` was called. Compiling needs
    a C++ compiler on CPU (Triton on CUDA); where it fails the worker logs why and goes on
    eagerly, and stops trying for the rest of the process. Other errors propagate."""

    broken = False  # compiling failed in this process
    recompile_limit = 64  # sizes x optimizers x batch shapes a long-running worker meets

    def __init__(self, compiled: bool) -> None:
        self.compiled = False
        if compiled:
            self.compile()

    def compile(self) -> None:
        self.compiled = not _Stepper.broken

    def __call__(self, pack: _Pack, x: Tensor, y: Tensor, lr: Tensor, shared: bool = False
                 ) -> Tensor:
        return self._run(train_step, pack, x, y, lr, shared)

    def metrics(self, pack: _Pack, task: Task, rows: slice, x: Tensor, y: Tensor
                ) -> dict[str, Tensor]:
        return self._run(chunk_metrics, pack, task, *pack.chunk(rows), x, y)

    def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.compiled:
            try:
                return _compiled(function)(*args)
            except compile_errors() as error:  # they surface at the first call of a shape
                log.warning("torch.compile of the fused step failed, training eagerly: %s",
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
                _Stepper.broken = True
                self.compiled = False
        return function(*args)


@lru_cache(maxsize=2)
def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    dynamo = torch._dynamo.config  # type: ignore[attr-defined]
    dynamo.recompile_limit = max(dynamo.recompile_limit, _Stepper.recompile_limit)
    return torch.compile(function)


def chunk_metrics(pack: _Pack, task: Task, params: list[Tensor], buffers: dict[str, Tensor],
                  x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``task.metric_tensors`` of the trials with these stacked parameters, on shared ``x``."""
    return task.stacked_metric_tensors(pack.apply(params, buffers, x, shared_input=True), y)


def evaluate(pack: _Pack, task: Task, batches: Iterable[Batch], positions: Sequence[int],
             step: _Stepper) -> list[tuple[int, dict[str, float]]]:
    """Validation metrics of the given stack positions over the validation batches, averaged
    as ``MetricMean`` says, ``EVAL_CHUNK`` trials at a time (stopped rows awaiting compaction
    are left out). For a task whose metrics are tensors each chunk's are computed with the
    step (compiled, when it is) and come back from the device in one transfer."""
    chunks = [slice(start, start + EVAL_CHUNK) for start in range(0, len(pack.rows), EVAL_CHUNK)
              if any(start <= j < start + EVAL_CHUNK for j in positions)]
    tensors = task.has_metric_tensors()
    stacked = [MetricMean[Tensor]() for _ in chunks]
    each = [[MetricMean[float]() for _ in pack.rows[chunk]] for chunk in chunks]
    with torch.no_grad():
        for x, y in batches:
            for c, chunk in enumerate(chunks):
                if tensors:
                    stacked[c].add(step.metrics(pack, task, chunk, x, y), len(y))
                    continue
                outputs = pack.forward(x, shared_input=True, rows=chunk)
                for mean, values in zip(each[c], task.stacked_metrics(outputs, y), strict=True):
                    mean.add(values, len(y))
    out: list[tuple[int, dict[str, float]]] = []
    for c, chunk in enumerate(chunks):
        metrics = metric_rows(stacked[c].mean()) if tensors else [m.mean() for m in each[c]]
        out += ((j, metrics[j - chunk.start]) for j in positions if chunk.start <= j < chunk.stop)
    return out


class _Epoch:
    """One block's epoch: every step's LR for each of its trials, their data orders, and their
    summed batch losses."""

    def __init__(self, lrs: list[list[float]], device: torch.device, perms: Tensor | None
                 ) -> None:
        self.lrs = lrs
        self.lr_table = torch.tensor(lrs, dtype=torch.float64, device=device)
        self.perms = perms.to(device) if perms is not None else None  # None: shared batches
        self.loss_sums = torch.zeros(len(lrs), device=device)


class _Run:
    """What the blocks of one ``train_pack`` call share: the trials' schedules, data orders,
    results and reporters, all indexed as the caller's lists."""

    def __init__(self, task: Task, configs: Sequence[TrialConfig], seeds: Sequence[int],
                 epochs: int, objective: str, reporters: Sequence[Reporter],
                 on_done: Callable[[int, TrainResult], None] | None, feed: Feed) -> None:
        self.task, self.feed, self.epochs, self.objective = task, feed, epochs, objective
        self.reporters, self.on_done = reporters, on_done
        self.batch = configs[0].batch_size or task.info.batch_size
        self.spe = feed.steps_per_epoch(self.batch)
        for config in configs:
            config.schedule.check_horizon(epochs * self.spe, self.spe)
        self.functions = [c.schedule.function() for c in configs]
        self.base_lrs = [c.optimizer.lr for c in configs]
        # a streaming task's batches are drawn once for the whole pack: the first trial's order
        self.orders = [torch.Generator().manual_seed(s)
                       for s in (seeds[:1] if feed.streams else seeds)]
        self.results = [TrainResult("complete", None, 0) for _ in configs]
        self.metric_history: list[list[float]] = [[] for _ in configs]

    def begin(self, pack: _Pack, epoch: int) -> _Epoch:
        """LRs and data orders of the block's epoch; stopped rows awaiting compaction get LR 0."""
        spe, total = self.spe, self.epochs * self.spe
        training = set(pack.live)
        lrs = [[self.functions[i](epoch * spe + s, total, spe, self.base_lrs[i],
                                  self.metric_history[i]) if j in training else 0.0
                for s in range(spe)] for j, i in enumerate(pack.rows)]
        if self.feed.streams:
            return _Epoch(lrs, self.feed.device, None)
        assert self.feed.data is not None
        n = len(self.feed.data.x_train)
        perms = torch.stack([torch.randperm(n, generator=self.orders[i]) if j in training
                             else torch.arange(n) for j, i in enumerate(pack.rows)])
        return _Epoch(lrs, self.feed.device, perms)

    def batches(self) -> Iterable[Batch | None]:
        """One epoch's steps: a streaming task's batch shared by every block and trial, or
        None (each trial slices its own batch from the task's tensors)."""
        if self.feed.streams:
            return self.feed.train(self.batch, self.orders[0], self.spe)
        return [None] * self.spe

    def step(self, pack: _Pack, state: _Epoch, s: int, step: _Stepper, shared: Batch | None
             ) -> None:
        if shared is not None:
            state.loss_sums += step(pack, *shared, state.lr_table[:, s], shared=True)
            return
        assert state.perms is not None and self.feed.data is not None
        data = self.feed.data
        idx = state.perms[:, s * self.batch:(s + 1) * self.batch]
        state.loss_sums += step(pack, data.x_train[idx], data.y_train[idx],
                                state.lr_table[:, s])

    def report(self, pack: _Pack, epoch: int, state: _Epoch, step: _Stepper
               ) -> list[tuple[int, bool]]:
        """Validate the block's live trials and report each that did not diverge. Returns
        their positions in order, each with whether it diverged; ``judge`` then asks the
        reported ones whether to stop, once every block of the pack has reported."""
        train_losses = (state.loss_sums / self.spe).tolist()
        seen: list[tuple[int, bool]] = []
        for j, metrics in evaluate(pack, self.task, self.feed.val(), pack.live, step):
            i = pack.rows[j]
            metrics["train_loss"] = train_losses[j]
            value = metrics[self.objective]
            result = self.results[i]
            result.epochs_run = epoch + 1
            result.metrics = metrics
            if not (math.isfinite(train_losses[j]) and math.isfinite(value)):
                result.outcome = "diverged"
                seen.append((j, True))
                continue
            result.values.append(value)
            result.lrs.append(state.lrs[j][0])
            result.value = value
            self.reporters[i].report(epoch, value, state.lrs[j][0], metrics)
            self.metric_history[i].append(value)
            seen.append((j, False))
        return seen

    def judge(self, pack: _Pack, epoch: int, seen: list[tuple[int, bool]]) -> list[int]:
        """The block's trials that ended (diverged, pruned, or complete after the last epoch)
        go to ``on_done``. Returns the stopped positions."""
        stopped: list[int] = []
        for j, diverged in seen:
            i = pack.rows[j]
            if diverged:
                stopped.append(j)
            elif epoch < self.epochs - 1 and self.reporters[i].should_prune():
                self.results[i].outcome = "pruned"
                stopped.append(j)
        gone = set(stopped)
        pack.live = [j for j in pack.live if j not in gone]
        if self.on_done is not None:
            for j in stopped + (pack.live if epoch == self.epochs - 1 else []):
                self.on_done(pack.rows[j], self.results[pack.rows[j]])
        return stopped


def train_pack(task: Task, configs: Sequence[TrialConfig], epochs: int, objective: str,
               seeds: Sequence[int], device: torch.device,
               reporters: Sequence[Reporter] | None = None,
               on_done: Callable[[int, TrainResult], None] | None = None,
               after_epoch: Callable[[], None] | None = None,
               compile_after: float | None = None, block: int = 0,
               after_reports: Callable[[], None] | None = None) -> list[TrainResult]:
    """Train K trials (one optimizer kind, one batch size) at once; results in input order.

    ``on_done(i, result)`` runs as soon as trial ``i`` ends (pruned or diverged mid-way, or
    complete after the last epoch), so its result can be recorded at once. Each epoch every
    live trial reports first; then ``after_reports()`` runs (the epoch's reports sent at
    once); then each is asked whether to stop; then ``after_epoch()`` runs (batched
    bookkeeping writes).
    ``compile_after``: compile the training step once the pack's remaining work, estimated
    from its last epoch, is at least this many seconds (0: from the start; None: never).
    ``block``: trials stepped at once (0: ``blocking.block_size`` picks, by the device's cache);
    blocks take turns step by step, so every trial still reports each epoch together.
    """
    if len(seeds) != len(configs):
        raise ValueError(f"{len(configs)} trials but {len(seeds)} seeds")
    reporters = list(reporters) if reporters is not None else [NullReporter() for _ in configs]
    feed = Feed(task, device)
    run = _Run(task, configs, seeds, epochs, objective, reporters, on_done, feed)
    size = block_size(task, feed.first_batch(run.batch), configs[0].optimizer.name,
                      len(configs), block)
    packs = [_Pack(task, [configs[i] for i in rows], [seeds[i] for i in rows], device, rows)
             for rows in blocks(len(configs), size)]
    step = _Stepper(compile_after == 0)
    for epoch in range(epochs):
        started = time.perf_counter()
        states = [run.begin(pack, epoch) for pack in packs]
        for s, shared in enumerate(run.batches()):
            for pack, state in zip(packs, states, strict=True):
                run.step(pack, state, s, step, shared)
        seen = [run.report(pack, epoch, state, step)
                for pack, state in zip(packs, states, strict=True)]
        if after_reports is not None:
            after_reports()
        stopped = [run.judge(pack, epoch, reported)
                   for pack, reported in zip(packs, seen, strict=True)]
        if after_epoch is not None:
            after_epoch()
        for pack, gone in zip(packs, stopped, strict=True):
            if gone and pack.live and (not step.compiled or len(pack.live) <= len(pack.rows) // 2):
                # stopped trials leave the stack: no more compute for them (a compiled step
                # compiles again for each new size, so it waits until half the stack has stopped)
                pack.keep(pack.live)
        packs = [pack for pack in packs if pack.live]
        if not packs:
            break
        remaining = (time.perf_counter() - started) * (epochs - epoch - 1)
        if compile_after is not None and not step.compiled and remaining >= compile_after:
            log.info("compiling the fused step: %d trials, about %.0f s of eager work left",
                     sum(len(pack.live) for pack in packs), remaining)
            step.compile()
    return run.results
