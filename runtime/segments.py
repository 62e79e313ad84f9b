"""A model split into *units*: contiguous segments of its FX graph that run one after another.

The executor runs a job unit by unit and may stop between any two units (a sync point), so a
batch inference can yield the device to a latency-critical one and resume later from the
intermediate tensors it kept. Splitting works on any FX graph, not only ``nn.Sequential``:

1. The graph comes from ``ExportedProgram.module()`` (a ``model.pt2``), from
   ``torch.fx.symbolic_trace`` (an ``nn.Module``), or is a ``GraphModule`` already.
2. Its compute nodes, in topological (graph) order, are cut into contiguous groups. Each
   group becomes a ``GraphModule`` whose inputs are the live values produced before it (or
   the model inputs) and whose outputs are the values still needed later. Parameters are
   shared with the original module, not copied.
3. :func:`split` first cuts at every allowed position (the finest split), measures each
   piece with the caller's timer, and merges consecutive pieces into at most ``max_units``
   units of roughly equal time.

A cut is allowed only where every value crossing it is a plain value (a tensor, a number),
never a container such as the tuple an op returns before ``getitem`` takes it apart.

TorchScript models run as a single unit (:func:`from_script`): a scripted graph has no
reliable way back to independently callable pieces (control flow lives in nested blocks,
methods are compiled together), so splitting it is not attempted.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch.utils import _pytree as pytree

from runtime.errors import InvalidInput

_COMPUTE_OPS = ("call_function", "call_method", "call_module")

Model = torch.nn.Module | torch.export.ExportedProgram
PieceCosts = Callable[["SegmentedModel"], Sequence[float]]


class State:
    """The live values of one inference between units; opaque to callers.

    Created by :meth:`SegmentedModel.start`, advanced by :meth:`SegmentedModel.run`, consumed
    by :meth:`SegmentedModel.finish`. It keeps exactly the tensors that later units or the
    outputs still need, so a preempted job holds its intermediate results while it waits.
    """

    __slots__ = ("_owner", "_values", "_next_unit", "_finished")

    def __init__(self, owner: SegmentedModel, values: dict[str, Any]) -> None:
        self._owner = owner
        self._values = values
        self._next_unit = 0
        self._finished = False

    @property
    def next_unit(self) -> int:
        """Index of the unit that runs next (``num_units`` once every unit has run)."""
        return self._next_unit

    def __repr__(self) -> str:
        return (
            f"State(model={self._owner.name!r}, next_unit={self._next_unit}, "
            f"live={len(self._values)})"
        )


@dataclass(frozen=True)
class _Unit:
    fn: Callable[..., tuple[Any, ...]]
    reads: tuple[str, ...]  # state keys passed positionally
    writes: tuple[str, ...]  # state keys for the returned tuple, in order
    drops: tuple[str, ...]  # state keys no later unit or output needs


class SegmentedModel:
    """A model as an ordered list of units, run by the executor a chunk at a time.

    Contract for callers (the executor):

    - ``start(inputs)`` takes tensors by input name (moved to the model's device if they
      are elsewhere) and returns the state before unit 0.
    - ``run(state, start, end)`` runs units ``[start, end)`` under ``torch.inference_mode``
      and returns the same state advanced to ``end``. ``start`` must equal
      ``state.next_unit``: a job resumes exactly where it stopped. Ops are queued on the
      current CUDA stream; synchronising is the caller's business.
    - ``finish(state)`` returns the outputs by output name once every unit has run.

    Running all units in order gives the same outputs as the whole model, whatever the chunk
    boundaries. Distinct states may run concurrently from different threads (units hold no
    per-call state); one state must not be used by two threads at once. ``to()`` is not
    thread-safe and must happen before any ``start()``.
    """

    def __init__(
        self,
        name: str,
        units: Sequence[_Unit],
        input_names: Sequence[str],
        input_keys: Sequence[str],
        output_names: Sequence[str],
        output_refs: Sequence[tuple[str, Any]],
        *,
        cuts: Sequence[int] = (),
        device: torch.device | str = "cpu",
        move: Callable[[torch.device], SegmentedModel] | None = None,
        defaults: Mapping[str, Any] | None = None,
        holders: Sequence[Any] = (),
    ) -> None:
        if len(input_names) != len(input_keys):
            raise ValueError(f"{len(input_names)} input names for {len(input_keys)} inputs")
        if len(output_names) != len(output_refs):
            raise ValueError(f"{len(output_names)} output names for {len(output_refs)} outputs")
        if len(set(output_names)) != len(output_names) or len(set(input_names)) != len(input_names):
            raise ValueError("input and output names must be unique")
        self.name = name
        self.input_names: tuple[str, ...] = tuple(input_names)
        self.output_names: tuple[str, ...] = tuple(output_names)
        self.cuts: tuple[int, ...] = tuple(cuts)
        self.device = torch.device(device)
        self._units = tuple(units)
        self._input_keys = tuple(input_keys)
        self._outputs = tuple(output_refs)  # ("key", state key) or ("const", value)
        self._defaults = dict(defaults or {})
        self._move = move
        # what else holds the weights (the program, its graph module): see release()
        self._holders = tuple(holders)
        self._needed = {k for u in self._units for k in u.reads} | {
            ref for kind, ref in self._outputs if kind == "key"
        }

    @property
    def num_units(self) -> int:
        return len(self._units)

    def release(self) -> None:
        """Let go of the weights now, for a model no state will run again (a version a
        reload replaced). Graph modules sit in reference cycles, which the runtime keeps out
        of the garbage collector's reach (``runtime.heap``): dropping the references would
        leave their tensors, on the device too, until a full collection. Here every module
        and program that holds them gives them up, so reference counting frees them; what
        is left is a few plain objects. The model cannot run afterwards."""
        fns = [u.fn for u in self._units]
        cells = [c.cell_contents for f in fns for c in (getattr(f, "__closure__", None) or ())]
        for holder in [*fns, *cells, *self._holders]:
            _drop_tensors(holder)
        self._units = ()
        self._outputs = ()
        self._defaults = {}
        self._move = None
        self._holders = ()
        self._needed = set()

    def start(self, inputs: Mapping[str, torch.Tensor]) -> State:
        """The state before unit 0. Raises InvalidInput for missing or unknown inputs."""
        unknown = sorted(set(inputs) - set(self.input_names))
        missing = [
            name
            for name, key in zip(self.input_names, self._input_keys, strict=True)
            if name not in inputs and key not in self._defaults
        ]
        if unknown or missing:
            raise InvalidInput(
                f"model '{self.name}' takes inputs {list(self.input_names)}; "
                f"missing {missing}, unknown {unknown}"
            )
        values: dict[str, Any] = {}
        for name, key in zip(self.input_names, self._input_keys, strict=True):
            if key not in self._needed:
                continue
            value = inputs[name] if name in inputs else self._defaults[key]
            if isinstance(value, torch.Tensor) and value.device != self.device:
                value = value.to(self.device)
            values[key] = value
        return State(self, values)

    def run(self, state: State, start: int, end: int) -> State:
        """Run units ``[start, end)``; see the class docstring for the contract."""
        if state._owner is not self:
            raise ValueError(f"state belongs to model '{state._owner.name}', not '{self.name}'")
        if state._finished:
            raise ValueError("state was already finished")
        if start != state._next_unit:
            raise ValueError(f"state is at unit {state._next_unit}, cannot run from {start}")
        if not start <= end <= self.num_units:
            raise ValueError(f"bad unit range [{start}, {end}) for {self.num_units} units")
        values = state._values
        with torch.inference_mode():
            for index in range(start, end):
                unit = self._units[index]
                results = unit.fn(*[values[key] for key in unit.reads])
                for key in unit.drops:
                    del values[key]
                values.update(zip(unit.writes, results, strict=True))
                state._next_unit = index + 1
        return state

    def finish(self, state: State) -> dict[str, torch.Tensor]:
        """The outputs by output name; the state is released and cannot be used again."""
        if state._owner is not self:
            raise ValueError(f"state belongs to model '{state._owner.name}', not '{self.name}'")
        if state._finished:
            raise ValueError("state was already finished")
        if state._next_unit != self.num_units:
            raise ValueError(
                f"state is at unit {state._next_unit} of {self.num_units}; run the rest first"
            )
        values = state._values
        out = {
            name: (values[ref] if kind == "key" else ref)
            for name, (kind, ref) in zip(self.output_names, self._outputs, strict=True)
        }
        state._values = {}
        state._finished = True
        return out

    def to(self, device: torch.device | str) -> SegmentedModel:
        """Move the model to ``device`` in place (like ``nn.Module.to``) and return it.

        Exported programs are moved with ``torch.export.passes.move_to_device_pass`` (which
        also rewrites devices burnt into the graph) and re-split at the same cuts.
        """
        device = torch.device(device)
        if device == self.device:
            return self
        if self._move is None:
            raise ValueError(f"model '{self.name}' cannot be moved")
        moved = self._move(device)
        self.__dict__.update(moved.__dict__)
        return self

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every unit at once (no sync points): for tests and tools."""
        return self.finish(self.run(self.start(inputs), 0, self.num_units))

    def __repr__(self) -> str:
        return (
            f"SegmentedModel(name={self.name!r}, num_units={self.num_units}, device={self.device})"
        )


# ---------------------------------------------------------------------------------------------
# FX graphs


def graph_module(model: Model) -> torch.fx.GraphModule:
    """The FX graph of ``model``: ``ep.module()``, the GraphModule itself, or a symbolic trace."""
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("TorchScript modules are not FX graphs; use from_script()")
    if isinstance(model, torch.fx.GraphModule):
        return model
    if isinstance(model, torch.nn.Module):
        return torch.fx.symbolic_trace(model)
    raise TypeError(f"cannot split a {type(model).__name__}")


def _compute_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op in _COMPUTE_OPS]


def _output_node(gm: torch.fx.GraphModule) -> torch.fx.Node:
    for node in reversed(gm.graph.nodes):
        if node.op == "output":
            return node
    raise ValueError("graph has no output node")


def _is_container(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return True
    return any(user.target is operator.getitem for user in node.users)


def cut_points(model: torch.fx.GraphModule) -> list[int]:
    """Positions where the compute nodes may be cut, in increasing order.

    Position ``p`` (``0 < p < n`` for ``n`` compute nodes) cuts between compute node
    ``p - 1`` and ``p``. It is allowed unless a container value (a tuple or list an op
    returns) would have to cross it.
    """
    nodes = _compute_nodes(model)
    index = {node: i for i, node in enumerate(nodes)}
    blocked = [False] * (len(nodes) + 1)
    for i, node in enumerate(nodes):
        if not _is_container(node):
            continue
        last = max((index[u] for u in node.users if u in index), default=i)
        for p in range(i + 1, last + 1):
            blocked[p] = True
    return [p for p in range(1, len(nodes)) if not blocked[p]]


def _default_output_names(gm: torch.fx.GraphModule, count: int) -> list[str]:
    spec = None
    codegen = gm.graph._codegen
    if isinstance(codegen, torch.fx.graph._PyTreeCodeGen):
        spec = codegen.pytree_info.out_spec
    if spec is None:
        _, spec = pytree.tree_flatten(_output_node(gm).args[0])
    try:
        structure = pytree.tree_unflatten(list(range(count)), spec)
    except Exception:  # a spec that does not fit: fall back to positional names
        structure = None
    if isinstance(structure, dict) and all(
        isinstance(k, str) and isinstance(v, int) for k, v in structure.items()
    ):
        names = [""] * count
        for key, i in structure.items():
            names[i] = key
        if all(names):
            return names
    if count == 1:
        return ["output"]
    return [f"output_{i}" for i in range(count)]


def signature(model: Model) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """The graph's inputs and flattened outputs as ``(default name, example value)`` pairs,
    in order; the value is the node's ``meta["val"]`` (a fake tensor for exported programs)
    or None where the graph carries none."""
    gm = graph_module(model)
    leaves = pytree.tree_leaves(_output_node(gm).args[0])
    names = _default_output_names(gm, len(leaves))
    inputs = [(str(n.target), n.meta.get("val")) for n in gm.graph.nodes if n.op == "placeholder"]
    outputs = [
        (name, leaf.meta.get("val") if isinstance(leaf, torch.fx.Node) else leaf)
        for name, leaf in zip(names, leaves, strict=True)
    ]
    return inputs, outputs


def _fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _check_cuts(cuts: Sequence[int], allowed: Sequence[int]) -> list[int]:
    cuts = list(cuts)
    if any(b <= a for a, b in itertools.pairwise(cuts)):
        raise ValueError(f"cuts must increase strictly, got {cuts}")
    bad = sorted(set(cuts) - set(allowed))
    if bad:
        raise ValueError(f"cuts {bad} are not allowed positions for this graph")
    return cuts


def _fx_units(
    gm: torch.fx.GraphModule, cuts: Sequence[int], name: str
) -> tuple[list[_Unit], list[tuple[str, Any]]]:
    nodes = _compute_nodes(gm)
    bounds = [0, *cuts, len(nodes)]
    groups = [nodes[a:b] for a, b in itertools.pairwise(bounds)]
    group_of = {node: g for g, group in enumerate(groups) for node in group}
    out_node = _output_node(gm)
    leaves, _ = pytree.tree_flatten(out_node.args[0])

    outputs: list[tuple[str, Any]] = []
    for leaf in leaves:
        if not isinstance(leaf, torch.fx.Node):
            outputs.append(("const", leaf))
        elif leaf.op == "get_attr":
            outputs.append(("const", _fetch_attr(gm, str(leaf.target))))
        else:
            outputs.append(("key", leaf.name))
    final_keys = {ref for kind, ref in outputs if kind == "key"}

    def crosses(value: torch.fx.Node, g: int) -> bool:
        return value.op == "placeholder" or (value in group_of and group_of[value] != g)

    reads: list[list[str]] = []
    for g, group in enumerate(groups):
        seen: dict[str, None] = {}
        for node in group:
            for arg in node.all_input_nodes:
                if crosses(arg, g):
                    seen[arg.name] = None
        reads.append(list(seen))
    last_read: dict[str, int] = {}
    for g, keys in enumerate(reads):
        for key in keys:
            last_read[key] = g

    by_name = {n.name: n for n in gm.graph.nodes}
    units: list[_Unit] = []
    for g, group in enumerate(groups):
        writes = [
            n.name
            for n in group
            if n.name in final_keys or any(u in group_of and group_of[u] > g for u in n.users)
        ]
        drops = tuple(k for k in reads[g] if last_read[k] == g and k not in final_keys)
        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for key in reads[g]:
            env[by_name[key]] = graph.placeholder(key)
        for node in group:
            for arg in node.all_input_nodes:
                if arg.op == "get_attr" and arg not in env:
                    env[arg] = graph.node_copy(arg)
            env[node] = graph.node_copy(node, env.__getitem__)
        graph.output(tuple(env[by_name[k]] for k in writes))
        module = torch.fx.GraphModule(gm, graph, class_name=f"{_ident(name)}_unit{g}")
        units.append(_Unit(module, tuple(reads[g]), tuple(writes), drops))
    return units, outputs


def _drop_tensors(holder: Any) -> None:
    """Take every tensor out of ``holder``: a module (each submodule's parameters, buffers
    and tensor attributes) or an exported program (its state and constants, its graph
    module)."""
    if isinstance(holder, torch.export.ExportedProgram):
        holder.state_dict.clear()
        holder.constants.clear()
        holder = holder.graph_module
    if isinstance(holder, torch.jit.ScriptModule) or not isinstance(holder, torch.nn.Module):
        return  # TorchScript's tensors live in C++ objects, freed when the last reference goes
    for module in holder.modules():
        module._parameters.clear()
        module._buffers.clear()
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor):
                delattr(module, key)


def _ident(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name)
    return cleaned if cleaned[:1].isalpha() else f"m_{cleaned}"


def _move_graph_module(gm: torch.fx.GraphModule, device: torch.device) -> None:
    gm.to(device)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _fetch_attr(gm, node.target)
            if isinstance(value, torch.Tensor) and value.device != device:
                owner_path, _, attr = node.target.rpartition(".")
                owner = _fetch_attr(gm, owner_path) if owner_path else gm
                setattr(owner, attr, value.to(device))
        if "device" in node.kwargs:
            node.kwargs = {**node.kwargs, "device": device}
    gm.recompile()


def from_graph(
    name: str,
    model: Model,
    cuts: Sequence[int] = (),
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> SegmentedModel:
    """Split ``model``'s FX graph at ``cuts`` (positions from :func:`cut_points`).

    ``input_names`` renames the graph's placeholders in order (default: their own names);
    ``output_names`` names the flattened outputs in order (default: the keys of a returned
    dict, else ``output`` or ``output_0``, ``output_1``, ...). Raises ValueError for cuts
    that are not allowed in this graph.
    """
    return _build(name, model, graph_module(model), cuts, input_names, output_names)


def _build(
    name: str,
    model: Model,
    gm: torch.fx.GraphModule,
    cuts: Sequence[int],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> SegmentedModel:
    cuts = _check_cuts(cuts, cut_points(gm))
    units, outputs = _fx_units(gm, cuts, name)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    keys = [n.name for n in placeholders]
    defaults = {n.name: n.args[0] for n in placeholders if n.args}
    in_names = (
        list(input_names) if input_names is not None else [str(n.target) for n in placeholders]
    )
    out_names = (
        list(output_names) if output_names is not None else _default_output_names(gm, len(outputs))
    )
    if len(in_names) != len(keys):
        raise ValueError(f"model '{name}' has {len(keys)} inputs, got {len(in_names)} names")
    if len(out_names) != len(outputs):
        raise ValueError(f"model '{name}' has {len(outputs)} outputs, got {len(out_names)} names")

    def move(device: torch.device) -> SegmentedModel:
        if isinstance(model, torch.export.ExportedProgram):
            from torch.export.passes import move_to_device_pass

            moved = move_to_device_pass(model, device)
            return _build(name, moved, moved.module(), cuts, in_names, out_names)
        _move_graph_module(gm, device)
        return _build(name, model, gm, cuts, in_names, out_names)

    return SegmentedModel(
        name,
        units,
        in_names,
        keys,
        out_names,
        outputs,
        cuts=cuts,
        device=_graph_device(gm),
        move=move,
        defaults=defaults,
        holders=(model, gm),
    )


def _graph_device(gm: torch.nn.Module) -> torch.device:
    for tensor in itertools.chain(gm.parameters(), gm.buffers()):
        return tensor.device
    return torch.device("cpu")


def balance(costs: Sequence[float], max_units: int) -> list[int]:
    """Cut positions that group consecutive pieces into ``min(max_units, len(costs))``
    groups of roughly equal total cost.

    Returns increasing positions ``p`` (``0 < p < len(costs)``; a cut before piece ``p``).
    Each cut goes to the piece boundary nearest to an equal share of the cost still left
    for the groups still to form, so a piece costlier than its share does not starve the
    others of units; boundaries that would leave a group under a quarter of its share are
    avoided where another one exists. No group is ever empty. Costs of all zero count every
    piece as 1.
    """
    if max_units < 1:
        raise ValueError(f"max_units must be >= 1, got {max_units}")
    if any(c < 0 for c in costs):
        raise ValueError("costs must not be negative")
    n = len(costs)
    if max_units >= n:
        return list(range(1, n))
    weights = list(costs) if sum(costs) > 0 else [1.0] * n
    prefix = list(itertools.accumulate(weights, initial=0.0))  # prefix[p]: cost before p
    cuts: list[int] = []
    last = 0
    for groups_left in range(max_units, 1, -1):
        share = (prefix[n] - prefix[last]) / groups_left
        floor = share / 4
        highest = n - groups_left + 1  # leave one piece for each group after this one
        candidates = range(last + 1, highest + 1)
        # Skip cuts that leave a nearly free group (an input guard alone, a final reshape):
        # a sync point there costs time and buys no preemption.
        roomy = [
            p
            for p in candidates
            if prefix[p] - prefix[last] >= floor
            and (groups_left > 2 or prefix[n] - prefix[p] >= floor)
        ]
        target = prefix[last] + share
        last = min(roomy or candidates, key=lambda p: (abs(prefix[p] - target), p))
        cuts.append(last)
    return cuts


def split(
    name: str,
    model: Model,
    *,
    max_units: int,
    piece_costs: PieceCosts | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> SegmentedModel:
    """Split ``model`` into at most ``max_units`` units of roughly equal cost.

    The model is first cut at every allowed position; ``piece_costs`` receives that finest
    split and returns one cost per unit (the profiler's timer, in any unit of time). Without
    it every compute node costs 1, which is deterministic. Consecutive pieces are then
    merged with :func:`balance`.
    """
    gm = graph_module(model)
    allowed = cut_points(gm)
    if piece_costs is None:
        bounds = [0, *allowed, len(_compute_nodes(gm))]
        costs: Sequence[float] = [b - a for a, b in itertools.pairwise(bounds)]
    else:
        fine = _build(name, model, gm, allowed, input_names, output_names)
        costs = piece_costs(fine)
        if len(costs) != fine.num_units:
            raise ValueError(f"got {len(costs)} costs for {fine.num_units} pieces")
    chosen = [allowed[p - 1] for p in balance(costs, max_units)]
    return _build(name, model, gm, chosen, input_names, output_names)


# ---------------------------------------------------------------------------------------------
# TorchScript


def from_script(
    name: str,
    module: torch.jit.ScriptModule,
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> SegmentedModel:
    """A TorchScript module as a single unit.

    Inputs are passed positionally in ``input_names`` order. The result may be a tensor, a
    tuple/list (matched to ``output_names`` in order) or a dict keyed by output name.
    """
    in_names = list(input_names)
    out_names = list(output_names)

    def call(*args: Any) -> tuple[Any, ...]:
        result = module(*args)
        if isinstance(result, dict):
            missing = [n for n in out_names if n not in result]
            if missing:
                raise ValueError(f"model '{name}' returned no {missing}")
            return tuple(result[n] for n in out_names)
        leaves = pytree.tree_leaves(result)
        if len(leaves) != len(out_names):
            raise ValueError(
                f"model '{name}' returned {len(leaves)} outputs, expected {len(out_names)}"
            )
        return tuple(leaves)

    keys = [f"input_{i}" for i in range(len(in_names))]
    out_keys = [f"output_{i}" for i in range(len(out_names))]
    unit = _Unit(call, tuple(keys), tuple(out_keys), tuple(keys))
    device = _graph_device(module)

    def move(device: torch.device) -> SegmentedModel:
        module.to(device)
        return from_script(name, module, in_names, out_names)

    return SegmentedModel(
        name,
        [unit],
        in_names,
        keys,
        out_names,
        [("key", k) for k in out_keys],
        device=device,
        move=move,
    )
