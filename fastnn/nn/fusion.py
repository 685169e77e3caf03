"""What a ``Sequential`` runs fused: the plan it makes once from its layers, and the chains
and the fused training step that carry the plan out.

``Sequential(*layers, fuse=True)`` builds one :class:`FusionPlan` and hands it its forward,
backward and fused step. Everything but the last choice below is decided from the layers
alone, at construction:

- **Epilogue fusion** (:func:`plan_steps`): a ``Dense`` without activation followed by an
  elementwise activation layer (``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``GELU``) is
  one step, ``dense_forward`` with that activation in the GEMM epilogue; a ``BatchNorm``
  followed by a ``ReLU`` is one ``batchnorm_forward(relu=True)``. The activation layer is not
  run at all.
- **Backward fusion** (:func:`plan_backward`): of two Dense steps in a row, the upper one
  applies the lower one's activation derivative and bias gradient to its dx
  (``dense_backward(x_activation=...)``), and the lower one then runs only its GEMMs.
- **Chains** (:func:`plan_runs`, :class:`DenseRun`): each run of consecutive Dense steps can
  go forward and backward as one row-blocked ``functional.dense_chain_*`` call. Whether it
  does is decided per batch (:meth:`FusionPlan.use_chains`), for all of the model's runs at
  once: only on the CPU with every Dense of the model narrow (``functional.
  dense_chain_blocked``), and never with a Dense inside a nested module, which would leave
  OpenBLAS's threads spinning on the cores the chain's threads need.
- **The fused step** (:meth:`FusionPlan.fused_step`): a model that is one run of Dense steps,
  trained with a loss whose ``name`` is one of ``functional.CHAIN_LOSSES``, does forward,
  loss and backward in one ``functional.dense_chain_step``, keeping no activation.

With ``fuse=False`` every step is one layer, run by its own forward and backward.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

from .. import _backend as B
from .. import functional as F
from .activations import Elementwise, ReLU
from .dense import Bf16Link, Dense, DenseSaved
from .module import Module
from .normalization import BatchNorm

__all__ = ["Step", "plan_steps", "plan_backward", "plan_runs", "DenseRun", "FusionPlan"]


class Step(NamedTuple):
    """One step of the forward: ``layer`` run by ``run(x, training)`` (its own forward, or the
    fused one), and ``epilogue``, the (activation, alpha) of the activation layer fused into a
    Dense (None when nothing is fused into it)."""

    layer: Module
    run: Callable
    epilogue: tuple[str, float] | None


def _run_dense(layer: Dense, x, training, *, activation: str, alpha: float, below=None, above=None):
    return layer._forward(x, training, activation, alpha, below=below, above=above)


def _run_batchnorm_relu(layer: BatchNorm, x, training):
    return layer._forward(x, training, True)


def plan_steps(layers: list[Module], fuse: bool) -> tuple[list[Step], dict[int, int]]:
    """The steps of the forward with epilogue fusion (see the module's docstring), and
    {index of each layer that is not run: index of the layer it runs fused into}."""
    steps, fused_into = [], {}
    index = 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        run, epilogue = layer.forward, None
        if fuse and isinstance(layer, Dense) and layer.activation == "identity" and isinstance(
                following, Elementwise):
            epilogue = following.fusable
            run = functools.partial(_run_dense, layer, activation=epilogue[0], alpha=epilogue[1])
        elif fuse and isinstance(layer, BatchNorm) and type(following) is ReLU:
            run = functools.partial(_run_batchnorm_relu, layer)
        else:
            following = None
        steps.append(Step(layer, run, epilogue))
        if following is not None:
            fused_into[index + 1] = index
            index += 1
        index += 1
    return (_link_bf16(steps) if fuse else steps), fused_into


def _link_bf16(steps: list[Step]) -> list[Step]:
    """The steps with each pair of consecutive Dense steps joined by a ``Bf16Link``: with bf16
    GEMMs on the CPU, the lower one's bias-and-activation pass writes the upper one's bf16
    operand (see ``Dense._forward``)."""
    linked = list(steps)
    for index in range(len(steps) - 1):
        lower, upper = linked[index], linked[index + 1]
        if not (isinstance(lower.layer, Dense) and isinstance(upper.layer, Dense)):
            continue
        link = Bf16Link()
        linked[index] = lower._replace(run=_with_links(lower, above=link))
        linked[index + 1] = upper._replace(run=_with_links(upper, below=link))
    return linked


def _with_links(step: Step, **links) -> Callable:
    """A Dense step's run with ``below`` / ``above`` links added (to those it has)."""
    if isinstance(step.run, functools.partial) and step.run.func is _run_dense:
        return functools.partial(_run_dense, *step.run.args, **{**step.run.keywords, **links})
    layer = step.layer
    return functools.partial(_run_dense, layer, activation=layer.activation, alpha=layer.alpha, **links)


def plan_backward(steps: list[Step], fuse: bool) -> list[dict | None]:
    """For each step, None (its layer's own backward) or the keyword arguments of
    ``Dense._backward`` that fuse a Dense step with the Dense steps next to it: ``done`` when
    the step above is a Dense (which has applied this layer's activation derivative and bias
    gradient), ``below`` the Dense of the step below (whose derivative and bias gradient this
    layer applies)."""
    fusion = []
    for index, step in enumerate(steps):
        if not (fuse and isinstance(step.layer, Dense)):
            fusion.append(None)
            continue
        above = steps[index + 1].layer if index + 1 < len(steps) else None
        below = steps[index - 1].layer if index > 0 else None
        fusion.append(dict(done=isinstance(above, Dense), below=below if isinstance(below, Dense) else None))
    return fusion


def plan_runs(steps: list[Step], layers: list[Module], fuse: bool) -> dict[int, "DenseRun"]:
    """{first step: :class:`DenseRun`} for each run of consecutive Dense steps. None without
    fusion, or when a Dense sits inside a nested module of ``layers`` (a Residual's block or
    projection), which would run on NumPy's GEMMs beside the chains."""
    direct = [step.layer for step in steps if isinstance(step.layer, Dense)]
    nested = [m for layer in layers for m in layer.modules()
              if isinstance(m, Dense) and all(m is not d for d in direct)]
    runs, start = {}, 0
    while fuse and not nested and start < len(steps):
        end = start
        while end < len(steps) and isinstance(steps[end].layer, Dense):
            end += 1
        if end > start:
            runs[start] = DenseRun(steps, start, end)
        start = max(end, start + 1)
    return runs


class DenseRun:
    """The Dense steps ``[start, end)`` of a plan, carried forward and backward as one
    row-blocked chain (``functional.dense_chain_forward`` / ``dense_chain_backward``), each
    thread taking its rows through all of the run's layers while they are in its cache. Every
    layer keeps the :class:`~fastnn.nn.dense.DenseSaved` its own forward would, in the same
    buffers."""

    def __init__(self, steps: list[Step], start: int, end: int):
        self.start, self.end = start, end
        self.layers: list[Dense] = [steps[index].layer for index in range(start, end)]
        self._epilogues = [steps[index].epilogue for index in range(start, end)]

    def specs(self) -> list[tuple]:
        """(W, b, activation, alpha) of each layer, as the chain kernels take them: the
        activation fused into the layer, else its own. Read at every call, since ``to()``
        replaces the parameters' arrays."""
        return [(layer.weight.data, None if layer.bias is None else layer.bias.data,
                 *((layer.activation, layer.alpha) if epilogue is None else epilogue))
                for layer, epilogue in zip(self.layers, self._epilogues)]

    def grads(self) -> dict:
        """dict(dWs=, dbs=): the layers' parameter gradients, which the chain kernels
        accumulate into (``+=``)."""
        return dict(dWs=[layer.weight.grad for layer in self.layers],
                    dbs=[None if layer.bias is None else layer.bias.grad for layer in self.layers])

    def forward(self, x, training: bool):
        """y = the last layer's output for x (N, in_features of the first layer); a training
        forward keeps every layer's ``DenseSaved``, inference keeps nothing and writes only
        new arrays."""
        first = self.layers[0]
        x = first._check_input(x, ndim=2, features=first.in_features, like=first.weight.data)
        specs, ys, auxs = self.specs(), [], []
        for layer, (_, _, activation, _) in zip(self.layers, specs):
            shape = (x.shape[0], layer.out_features)
            ys.append(layer._output(shape, x, training))
            auxs.append(layer._buffer("aux", shape, x, training) if F.dense_needs_aux(activation) else None)
        F.dense_chain_forward(x, specs, ys=ys, auxs=auxs, blocked=True)
        if not training:
            return ys[-1]
        below = x
        for layer, y, aux, (_, _, activation, alpha) in zip(self.layers, ys, auxs, specs):
            layer._saved = DenseSaved(below, y, aux, activation, alpha)
            below = y
        return below

    def backward(self, dout, need_input_grad: bool):
        """Every layer's parameter gradients (``+=``) from dout = d loss / d (last output);
        returns d loss / d x, or None when not ``need_input_grad`` (then not computed)."""
        layers = self.layers
        saved = [layer._saved_state() for layer in layers]
        x = saved[0].x
        dout = layers[-1]._check_grad(dout, saved[-1].y)
        dx = layers[0]._input_grad(x.shape, x) if need_input_grad else None
        return F.dense_chain_backward(
            dout, x, [(layer.weight.data, None, s.activation, s.alpha) for layer, s in zip(layers, saved)],
            [s.y for s in saved], [s.aux for s in saved], **self.grads(), need_dx=need_input_grad, dx=dx,
            blocked=True)

    def forget(self) -> None:
        """Drop what the layers kept: a fused step stored no activation, so their backward
        must raise as before any forward."""
        for layer in self.layers:
            layer._saved = None


class FusionPlan:
    """How a ``Sequential`` runs ``layers`` (see the module's docstring), made once:

    - ``steps`` (:class:`Step`) and ``fused_into`` (:func:`plan_steps`);
    - ``backward_fusion`` (:func:`plan_backward`);
    - ``runs`` (:func:`plan_runs`) and ``chain_widths``, the in and out widths of every Dense
      step, which decide whether a batch runs them chained;
    - ``first_trainable``, the first step with parameters (where a backward without the
      input's gradient stops), None when there is none;
    - ``completes``: for each step, the parameters whose gradients are complete once its
      backward has run (those of its layer that no earlier step shares), which
      :meth:`backward` hands to a ``grads_ready`` hook;
    - ``chained``: whether the latest training forward ran the runs as chains (its backward
      must); inference leaves it alone, so that it may run beside a training step."""

    def __init__(self, layers: list[Module], fuse: bool):
        self.steps, self.fused_into = plan_steps(layers, fuse)
        self.backward_fusion = plan_backward(self.steps, fuse)
        self.runs = plan_runs(self.steps, layers, fuse)
        self.chain_widths = [width for step in self.steps if isinstance(step.layer, Dense)
                             for width in (step.layer.in_features, step.layer.out_features)]
        self._run_ending_at = {run.end - 1: run for run in self.runs.values()}
        whole = self.runs.get(0)
        self._whole_run = whole if whole is not None and whole.end == len(self.steps) else None
        trainable = [index for index, step in enumerate(self.steps) if step.layer.parameters()]
        self.first_trainable = trainable[0] if trainable else None
        seen, self.completes = set(), []
        for step in self.steps:
            params = step.layer.parameters()
            self.completes.append([p for p in params if id(p) not in seen])
            seen.update(id(p) for p in params)
        self.chained = False

    def use_chains(self, x) -> bool:
        """Whether the batch ``x`` runs the Dense runs as chains: there are runs, no layer
        checks for NaN (the chain kernels do not), and ``functional.dense_chain_blocked`` says
        so for the model's widths (the native CPU path, every width narrow, two or more
        threads)."""
        if not self.runs or any(step.layer._check_nan for step in self.steps):
            return False
        try:
            x = B.as_array(x, "input")
        except TypeError:
            return False
        return F.dense_chain_blocked(x, self.chain_widths)

    def forward(self, x, training: bool):
        """Every step in order, each run of Dense steps as one chain where :meth:`use_chains`;
        returns the last output."""
        chained = self.use_chains(x)
        if training:
            self.chained = chained
        runs = self.runs if chained else {}
        steps, index = self.steps, 0
        while index < len(steps):
            run = runs.get(index)
            if run is None:
                x = steps[index].run(x, training)
                index += 1
            else:
                x = run.forward(x, training)
                index = run.end
        return x

    def backward(self, dout, need_input_grad: bool, grads_ready: Callable | None = None):
        """Every step's backward in reverse order, fused as planned (as chains after a chained
        forward); returns d loss / d input, or None when not ``need_input_grad``: then the
        steps before the first one with parameters are not run, and that one computes no dx.
        ``grads_ready(params)`` is called after each step (after each chain) with the
        parameters whose gradients it completed, so that their reduction can start while the
        steps below run (``fastnn.distributed.GradientReducer``)."""
        first = 0 if need_input_grad else self.first_trainable
        if first is None:
            return None
        ending_at = self._run_ending_at if self.chained else {}
        index = len(self.steps) - 1
        while index >= first:
            run = ending_at.get(index)
            if run is not None:
                dout = run.backward(dout, need_input_grad or run.start > first)
                if grads_ready is not None:
                    grads_ready([p for i in range(run.start, run.end) for p in self.completes[i]])
                index = run.start - 1
                continue
            layer, fusion = self.steps[index].layer, self.backward_fusion[index]
            need = need_input_grad or index > first
            dout = layer.backward(dout, need_input_grad=need) if fusion is None else \
                layer._backward(dout, need_input_grad=need, **fusion)
            if grads_ready is not None and self.completes[index]:
                grads_ready(self.completes[index])
            index -= 1
        return dout

    def fuses_step(self, x, loss) -> bool:
        """Whether :meth:`fused_step` can train on the batch ``x`` with ``loss`` (a
        ``fastnn.nn.Loss``): the model is one run of Dense steps, which ``x`` runs as a
        chain, and the loss has a ``name`` in ``functional.CHAIN_LOSSES`` and no NaN check."""
        return (self._whole_run is not None and loss.name in F.CHAIN_LOSSES and not loss._check_nan
                and self.use_chains(x))

    def fused_step(self, x, target, loss):
        """Forward, ``loss`` against ``target`` and backward in one
        ``functional.dense_chain_step``, where :meth:`fuses_step`: parameter gradients
        accumulate (``+=``); returns the mean loss, a 0-d array (``loss.fused_out``). Nothing
        is kept, so the layers' and the loss's backward raise until the next forward."""
        run = self._whole_run
        first = run.layers[0]
        x = first._check_input(x, ndim=2, features=first.in_features, like=first.weight.data)
        loss.check_classes(run.layers[-1].out_features)
        target = loss.check_target(target, x)
        value = loss.fused_out(x)
        F.dense_chain_step(x, run.specs(), loss.name, target, **run.grads(), loss_out=value, blocked=True)
        run.forget()
        loss.fused_done()
        self.chained = False
        return value
