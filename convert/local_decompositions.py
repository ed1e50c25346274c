"""litert-torch's graph decompositions done node by node instead of by re-tracing the whole graph.

litert-torch 0.10 lowers a model through ``safe_run_decompositions`` three times: after export, after its layout
pass (which rewrites every convolution as a Python function that permutes around it) and before lowering (which
turns ``conv2d`` into ``convolution`` and builds the pooling and upsampling composites). Each call re-traces the
whole program through AOT autograd, a fake-tensor pass and functionalization, op by op in Python: most of the
int8 lowering's time, although only a few hundred of its thousands of nodes change. Here only the nodes that
change are traced, each alone, on the shapes a fake-tensor pass gives them, with the same decomposition table
and the same composite-op preservation as the whole-graph re-trace, and spliced back in place. The .tflite
litert-torch writes from the result is byte for byte the one it writes otherwise (tests/test_convert_tflite.py,
float and int8, both layouts). A node the local trace cannot handle (a constant created while decomposing, a
non-tensor input) sends the call back to litert-torch's whole-graph re-trace; a litert-torch release other than
those listed in LOCAL_DECOMPOSITIONS_IN runs unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from typing import Callable, Iterator

import torch
from torch import fx
from torch.utils import _pytree as pytree

logger = logging.getLogger(__name__)

# The litert-torch releases whose safe_run_decompositions this module reproduces (read against their source):
# the one pyproject pins.
LOCAL_DECOMPOSITIONS_IN = ("0.10.0",)


class _CannotDecomposeLocally(Exception):
    """A node whose decomposition needs the whole-graph re-trace."""


def _reshape_contiguous(self: torch.Tensor, size: list[int]) -> torch.Tensor:
    # litert-torch retraces every aten.view this way (a view may not respect the memory format after its passes)
    return torch.reshape(self.contiguous(), size)


def _retraced_target(node: fx.Node, table: dict, builtins: set) -> Callable | None:
    """What litert-torch's whole-graph re-trace runs for ``node``: its decomposition's entry point, or None
    when the node comes out of the re-trace as it went in."""
    from litert_torch.fx_infra import _safe_run_decompositions as litert_decompositions

    if node.op != "call_function":
        return None
    op = node.target
    if isinstance(op, torch._ops.OpOverloadPacket):
        op = op.default
    if op in table:
        decomposition = table[op]
        forced = hasattr(decomposition, litert_decompositions._FORCE_DECOMP_ATTR)
        return decomposition if forced else node.target
    if not isinstance(op, (torch._ops.OpOverload, torch._ops.OperatorBase)) and op not in builtins:
        return node.target  # a Python function a pass put there: traced into ATen ops
    return None


def _node_inputs(node: fx.Node) -> tuple[list, pytree.TreeSpec, list[int]]:
    """``node``'s arguments flattened, their structure, and where the nodes among them are."""
    flat, spec = pytree.tree_flatten((node.args, node.kwargs))
    return flat, spec, [i for i, arg in enumerate(flat) if isinstance(arg, fx.Node)]


def _trace_node(node: fx.Node, target: Callable, python_table: dict) -> fx.GraphModule:
    """The ATen graph ``target`` makes of ``node``'s inputs (fake tensors), one placeholder per input node (inside
    ``_tracing``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    flat, spec, positions = _node_inputs(node)
    values = [flat[i].meta.get("val") for i in positions]
    if not all(isinstance(value, torch.Tensor) for value in values):
        raise _CannotDecomposeLocally(f"{node.name} reads a value that is not a tensor")

    def call(*tensors: torch.Tensor):
        filled = list(flat)
        for i, tensor in zip(positions, tensors):
            filled[i] = tensor
        args, kwargs = pytree.tree_unflatten(filled, spec)
        return target(*args, **kwargs)

    traced = make_fx(torch.func.functionalize(call, remove="mutations"), decomposition_table=python_table)(*values)
    if any(n.op == "get_attr" for n in traced.graph.nodes):
        raise _CannotDecomposeLocally(f"decomposing {node.name} creates a constant")
    return traced


@contextlib.contextmanager
def _tracing(fake_mode, cia_table: dict) -> Iterator[None]:
    """What the whole-graph re-trace traces under: its fake tensors, and the composite ops it keeps whole."""
    from torch._dispatch.python import enable_python_dispatcher
    from torch.export.exported_program import _override_composite_implicit_decomp

    with fake_mode, enable_python_dispatcher(), _override_composite_implicit_decomp(cia_table):
        yield


def _traced_meta(node: fx.Node, source: list) -> dict:
    """The metadata a re-trace gives the nodes it makes of ``node``: where it comes from (the .tflite's tensor
    names are built from it), with ``source`` as its provenance."""
    from torch.fx.proxy import _COPY_META_FIELDS

    meta = {key: node.meta[key] for key in (*_COPY_META_FIELDS, "stack_trace") if key in node.meta}
    meta["from_node"] = source
    return meta


def _splice(graph: fx.Graph, node: fx.Node, traced: fx.GraphModule, source: list) -> None:
    """Replace ``node`` by the nodes of ``traced``, its placeholders bound to the node's inputs as they are now
    (an input spliced before is its replacement by then)."""
    flat, _, positions = _node_inputs(node)
    inputs = [flat[i] for i in positions]
    env: dict[fx.Node, fx.Node] = dict(zip([n for n in traced.graph.nodes if n.op == "placeholder"], inputs))
    source = _traced_meta(node, source)
    result = None
    with graph.inserting_before(node):
        for inner in traced.graph.nodes:
            if inner.op == "placeholder":
                continue
            if inner.op == "output":
                result = pytree.tree_map_only(fx.Node, env.__getitem__, inner.args[0])
                continue
            copied = graph.node_copy(inner, env.__getitem__)
            copied.meta = {**source, "val": inner.meta["val"]}
            env[inner] = copied
    if isinstance(result, fx.Node):
        node.replace_all_uses_with(result)
    else:
        for user in list(node.users):
            if user.target is not operator.getitem:
                raise AssertionError(f"{user} reads a tuple result of {node} other than by index")
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    graph.erase_node(node)


def _refresh_tensor_meta(graph: fx.Graph) -> None:
    """``tensor_meta`` from each node's fake value: the lowering reads shapes and dtypes there."""
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    for node in graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            node.meta["tensor_meta"] = _extract_tensor_metadata(value)
        elif isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
            node.meta["tensor_meta"] = type(value)(_extract_tensor_metadata(v) for v in value)


def run_decompositions_locally(exported_program: torch.export.ExportedProgram, decomp_table=None,
                               can_skip: bool = True, *, whole_graph: Callable) -> torch.export.ExportedProgram:
    """litert-torch's ``safe_run_decompositions`` (same arguments, same result), tracing only the nodes the
    decomposition changes; ``whole_graph`` is litert-torch's own, for what cannot be done locally."""
    from litert_torch.fx_infra import _safe_run_decompositions as litert_decompositions
    from torch._guards import detect_fake_mode

    table = litert_decompositions._DUMMY_DECOMP_TABLE if decomp_table is not None and not decomp_table \
        else decomp_table
    graph = exported_program.graph
    builtins = litert_decompositions._BUILTIN_OPERATORS
    targets = {node: _retraced_target(node, table, builtins) for node in graph.nodes}
    targets = {node: target for node, target in targets.items() if target is not None}
    if not targets:
        return exported_program  # the whole-graph re-trace would change nothing (forced or not)
    for node in graph.nodes:
        if node.target == torch.ops.aten.view.default:
            targets[node] = _reshape_contiguous
    inputs = [n.meta.get("val") for n in graph.nodes if n.op == "placeholder"]
    for node in graph.nodes:
        node.meta = dict(node.meta)  # litert-torch's layout pass shares one dict between several nodes
    try:  # torch internals (the whole-graph re-trace's own): a torch without them decomposes the whole graph
        fake_mode = detect_fake_mode([v for v in inputs if isinstance(v, torch.Tensor)])
        if fake_mode is None or not all(isinstance(v, torch.Tensor) for v in inputs):
            raise _CannotDecomposeLocally("the program's inputs are not all fake tensors")
        from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp
        from torch.fx.passes.fake_tensor_prop import FakeTensorProp
        from torch.fx.traceback import NodeSource, NodeSourceAction

        cia_table, python_table = _split_decomp_table_to_cia_and_python_decomp(dict(table))
        with fake_mode:
            # the shapes the nodes have now: the layout pass rewrote nodes without updating their metadata
            FakeTensorProp(exported_program.graph_module, fake_mode).propagate_dont_convert_inputs(*inputs)
        with _tracing(fake_mode, cia_table):
            traced = {node: _trace_node(node, target, python_table) for node, target in targets.items()}
        # provenance as the whole-graph re-trace records it: every node made anew from the node it was
        sources = {node: [NodeSource(node, "", NodeSourceAction.CREATE)] for node in graph.nodes
                   if node.op == "call_function"}
    except _CannotDecomposeLocally as reason:
        logger.debug("Decomposing the whole graph: %s", reason)
        return whole_graph(exported_program, decomp_table, can_skip)
    except Exception as error:  # no node has changed yet (only their shapes were refreshed): litert-torch's way
        logger.warning("Decomposing the whole graph (slower) after a failed local decomposition: %r", error)
        return whole_graph(exported_program, decomp_table, can_skip)
    for node, subgraph in traced.items():
        _splice(graph, node, subgraph, sources.pop(node))
    for node, source in sources.items():
        node.meta["from_node"] = source
    _refresh_tensor_meta(graph)
    litert_decompositions._erase_assert_tensor_metadata_nodes(exported_program)
    graph.eliminate_dead_code()
    exported_program.graph_module.recompile()
    return exported_program


@contextlib.contextmanager
def local_decompositions() -> Iterator[None]:
    """litert-torch's conversions inside this context decompose node by node (see the module's docstring)."""
    import litert_torch
    from litert_torch import fx_infra
    from litert_torch.fx_infra import _safe_run_decompositions as litert_decompositions

    if litert_torch.__version__ not in LOCAL_DECOMPOSITIONS_IN:
        yield
        return
    whole_graph = litert_decompositions.safe_run_decompositions

    def local(exported_program, decomp_table=None, can_skip=True):
        return run_decompositions_locally(exported_program, decomp_table, can_skip, whole_graph=whole_graph)

    # fx_infra re-exports the function; litert-torch's passes call it through either name
    fx_infra.safe_run_decompositions = litert_decompositions.safe_run_decompositions = local
    try:
        yield
    finally:
        fx_infra.safe_run_decompositions = litert_decompositions.safe_run_decompositions = whole_graph
