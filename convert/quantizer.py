"""The PT2E quantizer of the int8 export: litert-torch's ``PT2EQuantizer`` plus what it misses.

litert-torch 0.10 finds ops through ``source_fn_stack``, which torch 2.13's non-strict export no
longer fills, so some ops are silently left in float and the converter wraps them in
DEQUANTIZE/QUANTIZE (a float island the Edge TPU cannot run). Annotated here explicitly: the
residual ``add``, ``avg_pool2d`` (AConv), ``reshape`` (the Frigate layout's flattened levels),
``cat``, and the fixed 1/256 output of ``sigmoid``/``softmax`` (TFLite's int8 kernels refuse
anything else). The network input gets fixed quantization parameters, scale 1/255 and zero point
-128, so the runtime feeds ``pixel - 128`` without float math. Outputs can be given fixed
quantization parameters too (the class logits are); when such an output concatenates several
maps, every map gets the same fixed parameters, so the concatenation needs no requantization.

Calibration spends most of its time in the observers, not in the network: hundreds of them per
image, each a dozen small tensor ops. The observers here compute exactly what litert-torch's do
(same histograms, same ranges, so the same int8 model) with a fraction of the calls.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import struct
import threading
from typing import Mapping

import torch
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
from litert_torch.quantize.pt2e_quantizer_utils import (
    get_fixed_qparams_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    propagate_annotation,
)
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import HistogramObserver, PerChannelMinMaxObserver
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    SharedQuantizationSpec,
)

aten = torch.ops.aten

# Model input = pixel / 255 in [0, 1]; int8 q = round(x * 255) - 128 = pixel - 128 exactly.
INPUT_SCALE = 1.0 / 255.0
INPUT_ZERO_POINT = -128

# Ops that move values without changing them: quantization is looked up through them.
_LAYOUT_OPS = (aten.permute.default, aten.permute_copy.default, aten.reshape.default, aten.view.default)
# Ops whose output takes its input's quantization parameters (no requantization).
_SHARED_QPARAMS_OPS = (aten.avg_pool2d.default, aten.reshape.default)
_FIXED_OUTPUT_OPS = (aten.sigmoid.default, aten.softmax.int, aten._softmax.default)
_QUANTILE_STEP = 1e-5  # torchao HistogramObserver's search granularity


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32, as torch rounds a Python number compared with a float32 tensor."""
    return struct.unpack("f", struct.pack("f", value))[0]


class StreamingHistogramObserver(HistogramObserver):
    """HistogramObserver with its running range kept as Python floats: per call one min/max reduction, one
    histogram and one in-place add while the range holds (the parent compares and copies 0-dim tensors a
    dozen times). A range that grows goes through the parent's re-binning, so the state is the parent's."""

    _deferred: list | None = None  # set by ObserverPipeline: calls are queued there, observed on its threads

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if self._deferred is not None:
            self._deferred.append((self, x_orig))
            return x_orig
        return self.observe(x_orig)

    def observe(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        low, high = torch.stack(torch.aminmax(x)).tolist()
        seen = getattr(self, "_seen_range", None)
        if seen is None or not (math.isfinite(low) and math.isfinite(high)):
            result = super().forward(x_orig)  # first call, or infinities the parent filters out
            self._seen_range = (self.min_val.item(), self.max_val.item())
            return result
        new_low, new_high = min(seen[0], low), max(seen[1], high)
        update = torch.histc(x, self.bins, min=new_low, max=new_high)
        if (new_low, new_high) == seen:
            self.histogram.add_(update)
            return x_orig
        new_min = torch.tensor(new_low, dtype=self.min_val.dtype)
        new_max = torch.tensor(new_high, dtype=self.max_val.dtype)
        combined = self._combine_histograms(self.histogram, self.min_val, self.max_val, update, new_min, new_max)
        self.histogram.detach_().resize_(combined.shape).copy_(combined)
        self.min_val.detach_().resize_(new_min.shape).copy_(new_min)
        self.max_val.detach_().resize_(new_max.shape).copy_(new_max)
        self._seen_range = (new_low, new_high)
        return x_orig

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The parent's search for the range of least L2 quantization error, in a fraction of its time (most of
        ``convert_pt2e``'s): a constant activation (zero-width bins, where the parent steps through all 10^5
        quantiles for a range it cannot change) is answered at once; otherwise the search runs on the cumulative
        histogram as Python floats instead of indexing a tensor at each of its thousands of steps."""
        bin_width = (self.max_val - self.min_val) / self.bins
        start, end = (0, self.bins - 1) if bin_width.item() == 0.0 else self._least_error_bins()
        return self.min_val + bin_width * start, self.min_val + bin_width * (end + 1)

    def _least_error_bins(self) -> tuple[int, int]:
        """The parent's steps: both quantiles move inwards by 1e-5, the side that gains more bins moves, until
        the error of quantizing on the bins between grows. Each quantile's count is rounded to float32 before it
        is compared, as the parent's float32 tensor comparison does: the same bins come out."""
        total = torch.sum(self.histogram).item()
        cumulative = torch.cumsum(self.histogram, dim=0).tolist()
        low_quantile, high_quantile = 0.0, 1.0
        start, end = 0, self.bins - 1
        least_error = math.inf
        while low_quantile < high_quantile:
            next_low, next_high = low_quantile + _QUANTILE_STEP, high_quantile - _QUANTILE_STEP
            below, above = _float32(next_low * total), _float32(next_high * total)
            left, right = start, end
            while left < end and cumulative[left] < below:
                left += 1
            while right > start and cumulative[right] > above:
                right -= 1
            new_start, new_end = start, end
            if left - start > end - right:
                new_start, low_quantile = left, next_low
            else:
                new_end, high_quantile = right, next_high
            if (new_start, new_end) == (start, end):
                continue
            error = self._compute_quantization_error(new_start, new_end)
            if error > least_error:
                break
            least_error, start, end = error, new_start, new_end
        return start, end


class ObserverPipeline:
    """Calibration with the histogram observers on threads of their own, beside the network's forward passes.

    On the calling thread each image's forward pass only queues what the StreamingHistogramObservers of ``model``
    are given; ``image_done`` hands the queue to the observer threads, each observer always to the same thread,
    and the next image's forward pass runs while they observe. Every observer gets the same tensors in the same
    order as inline, so it ends in the same state. The torch threads are split between the forward pass and the
    observers (a histogram runs best on one thread), and at most a few images' activations wait in memory.
    """

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        self.observers = [m for m in model.modules() if isinstance(m, StreamingHistogramObserver)]
        threads = threads or torch.get_num_threads()
        self.forward_threads = max(1, threads // 2)
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=1) for _ in range(max(2, threads - self.forward_threads))]
        self.pending: list[tuple[StreamingHistogramObserver, torch.Tensor]] = []
        self.owners: dict[int, int] = {}  # id(observer) -> its thread
        self.loads = [0] * len(self.queues)  # elements per image observed on each thread
        self.failure: BaseException | None = None
        self.started = threading.Barrier(len(self.queues) + 1)
        self.workers = [threading.Thread(target=self._observe, args=(jobs,), name=f"calibration observers {k}",
                                         daemon=True) for k, jobs in enumerate(self.queues)]
        self.previous_threads = torch.get_num_threads()

    def __enter__(self) -> "ObserverPipeline":
        for observer in self.observers:
            observer._deferred = self.pending
        for worker in self.workers:
            worker.start()
        self.started.wait()  # the workers have set their own thread count; this thread's is set last
        torch.set_num_threads(self.forward_threads)
        return self

    def image_done(self) -> None:
        """Hand the observations of the image just run to the observer threads; raises what one of them raised."""
        batches: list[list] = [[] for _ in self.queues]
        for observer, tensor in self.pending:
            owner = self.owners.get(id(observer))
            if owner is None:  # first seen: to the least loaded thread
                owner = self.owners[id(observer)] = self.loads.index(min(self.loads))
                self.loads[owner] += tensor.numel()
            batches[owner].append((observer, tensor))
        self.pending.clear()
        for jobs, batch in zip(self.queues, batches):
            jobs.put(batch)
        if self.failure is not None:
            raise self.failure

    def __exit__(self, *exc_info: object) -> None:
        for jobs in self.queues:
            jobs.put(None)
        for worker in self.workers:
            worker.join()
        for observer in self.observers:
            observer._deferred = None
        torch.set_num_threads(self.previous_threads)
        if self.failure is not None and exc_info[0] is None:
            raise self.failure

    def _observe(self, jobs: queue.Queue) -> None:
        torch.set_num_threads(1)
        self.started.wait()
        with torch.no_grad():
            while (batch := jobs.get()) is not None:
                if self.failure is not None:
                    continue  # drain: the calling thread raises
                try:
                    for observer, tensor in batch:
                        observer.observe(tensor)
                except BaseException as err:  # noqa: BLE001: raised on the calling thread
                    self.failure = err


class WeightMinMaxObserver(PerChannelMinMaxObserver):
    """PerChannelMinMaxObserver that skips a tensor it has already observed unchanged: a weight is the same
    tensor at every calibration image, and observing it again cannot move its minimum or maximum."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        last = getattr(self, "_last_observed", None)
        if last is not None and last[0] is x_orig and last[1] == x_orig._version:
            return x_orig
        result = super().forward(x_orig)
        self._last_observed = (x_orig, x_orig._version)
        return result


def _with_observer(spec, observer: type):
    """``spec`` observed by ``observer``, built with the same arguments as before."""
    arguments = spec.observer_or_fake_quant_ctr.p.keywords  # a PartialWrapper around functools.partial(class, ...)
    return dataclasses.replace(spec, observer_or_fake_quant_ctr=observer.with_args(**arguments))


def _annotated(node: Node) -> bool:
    annotation = node.meta.get("quantization_annotation")
    return annotation is not None and annotation._annotated


def _annotate(node: Node, inputs: dict, output) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map=inputs, output_qspec=output, _annotated=True)


def _fixed(scale: float, zero_point: int) -> FixedQParamsQuantizationSpec:
    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


class EdgeQuantizer(PT2EQuantizer):
    """Static int8: per-channel symmetric weights, per-tensor affine activations, fixed-scale input.

    ``fixed_outputs`` maps graph output positions to the (scale, zero point) they must have instead
    of calibrated ones.
    """

    def __init__(self, fixed_outputs: Mapping[int, tuple[float, int]] | None = None) -> None:
        super().__init__()
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        self.set_global(dataclasses.replace(
            config, input_activation=_with_observer(config.input_activation, StreamingHistogramObserver),
            output_activation=_with_observer(config.output_activation, StreamingHistogramObserver),
            weight=_with_observer(config.weight, WeightMinMaxObserver)))
        self.fixed_outputs = dict(fixed_outputs or {})

    def annotate(self, model: GraphModule) -> GraphModule:
        model = super().annotate(model)
        self._annotate_missed_ops(model)
        self._fix_input_qparams(model)
        self._fix_output_qparams(model)
        propagate_annotation(model)
        return model

    def _annotate_missed_ops(self, model: GraphModule) -> None:
        config = self.global_config
        for node in model.graph.nodes:
            if node.op != "call_function" or _annotated(node):
                continue
            args = [a for a in node.args if isinstance(a, Node)]
            if node.target == aten.add.Tensor and len(args) == 2:
                _annotate(node, {a: get_input_act_qspec(config) for a in args}, get_output_act_qspec(config))
            elif node.target in _SHARED_QPARAMS_OPS:
                shared = SharedQuantizationSpec(args[0])
                _annotate(node, {args[0]: shared}, shared)
            elif node.target == aten.cat.default:
                first, *rest = node.args[0]
                shared = SharedQuantizationSpec((first, node))
                _annotate(node, {first: get_input_act_qspec(config), **{a: shared for a in rest}}, shared)
            elif node.target in _FIXED_OUTPUT_OPS:
                _annotate(node, {args[0]: get_input_act_qspec(config)}, get_fixed_qparams_qspec(config))

    @staticmethod
    def _fix_input_qparams(model: GraphModule) -> None:
        """Give every edge reading the graph input (through layout permutes) the fixed input qparams."""
        fixed = _fixed(INPUT_SCALE, INPUT_ZERO_POINT)
        frontier = [n for n in model.graph.nodes if n.op == "placeholder"]
        while frontier:
            node = frontier.pop()
            for user in node.users:
                annotation = user.meta.get("quantization_annotation")
                if annotation is not None and node in annotation.input_qspec_map:
                    annotation.input_qspec_map[node] = fixed
                elif user.op == "call_function" and user.target in _LAYOUT_OPS:
                    frontier.append(user)

    def _fix_output_qparams(self, model: GraphModule) -> None:
        """Set the output qspec of the ops producing each fixed output (behind layout ops and concats)."""
        if not self.fixed_outputs:
            return
        [output] = [n for n in model.graph.nodes if n.op == "output"]
        results = output.args[0]
        for position, (scale, zero_point) in self.fixed_outputs.items():
            fixed = _fixed(scale, zero_point)
            for node in _producers(results[position]):
                annotation = node.meta.get("quantization_annotation")
                if annotation is None or annotation.output_qspec is None:
                    raise ValueError(f"Output {position} ({node.name}) is not produced by a quantized op")
                annotation.output_qspec = fixed
                if node.target == aten.cat.default:
                    # every input edge on the same fixed qparams as its producer: no requantization
                    annotation.input_qspec_map = {arg: fixed for arg in annotation.input_qspec_map}


def _producers(node: Node) -> list[Node]:
    """The quantized ops whose values reach ``node`` unchanged: through layout ops, and a concatenation
    together with each of its inputs."""
    while node.op == "call_function" and node.target in _LAYOUT_OPS:
        node = node.args[0]
    if node.op == "call_function" and node.target == aten.cat.default:
        return [node, *(p for arg in node.args[0] for p in _producers(arg))]
    return [node]
