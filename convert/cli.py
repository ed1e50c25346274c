"""Sub-commands of the ``convert`` package: ``convert`` (checkpoint -> int8 TFLite, optionally Edge TPU)
and ``edgetpu`` (precheck / compile an existing .tflite). Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

from edge_yolov9.cli import CONVERT_INPUT_SIZES, add_command, float_arg, int_arg
from edge_yolov9.errors import require
from edge_yolov9.model_file import LAYOUTS

from .calibration import DEFAULT_CALIBRATION_IMAGES
from .quiet import hidden_stderr, sigint_deferred, sigint_remembered

EXIT_CODES = """\
exit codes:
  0  done
  1  (edgetpu without --compile) the precheck fails
  2  bad input or failed conversion: nothing was written
  3  --edgetpu/--compile, but edgetpu_compiler is not installed: the CPU models are written and valid;
     the message says how to install the compiler
  4  --edgetpu/--compile: compilation failed, or ops would run on the CPU (unless --allow-cpu-ops);
     everything is written, with the compiler's log and the per-op report
  5  (convert) the int8 model loses more mAP50-95 than --max-drop against PyTorch: everything is written,
     with the accuracy report; 5 outranks 3 and 4"""


# Loggers that warn at import time about GPU kernels (triton, CUDA extensions) and deprecations:
# noise for a CPU conversion, shown only with --verbose.
IMPORT_NOISE = ("torchao", "torch.utils._pytree")


def _require(module: str, purpose: str, *, verbose: bool = False) -> None:
    """Import ``module`` (the converter's libraries load with it): a Ctrl-C meanwhile waits for the import to end;
    what they print on stderr as they load (TensorFlow's banner) shows only with --verbose."""
    if not verbose:
        for name in IMPORT_NOISE:
            logging.getLogger(name).setLevel(logging.ERROR)
    with sigint_deferred(), contextlib.nullcontext() if verbose else hidden_stderr():
        require(module, "convert", purpose)


def _convert(args: argparse.Namespace) -> int:
    with sigint_remembered():
        _require("litert_torch", "Converting a model to TFLite", verbose=args.verbose)
        sizes = list(dict.fromkeys(args.imgsz or [None]))
        if len(sizes) > 1:
            return _convert_sizes(args, sizes)
        result = _convert_one(args, sizes[0], args.output)
    _print_result(args, result)
    return int(result.exit_code)


def _convert_one(args: argparse.Namespace, imgsz, out_dir: Path):
    from .pipeline import ConvertOptions, convert_checkpoint

    return convert_checkpoint(ConvertOptions(
        checkpoint=args.model, imgsz=imgsz, calib=args.calib, out_dir=out_dir,
        calib_images=args.calib_images, uint8_io=args.uint8_io, edgetpu=args.edgetpu, compiler=args.compiler,
        min_runtime_version=args.min_runtime_version, allow_cpu_ops=args.allow_cpu_ops,
        accuracy=not args.no_accuracy, val=args.val, max_drop=args.max_drop, layout=args.layout))


def _convert_sizes(args: argparse.Namespace, sizes: list) -> int:
    """Each size converted into OUT/<WxH>/, then the sweep's table (convert.sweep)."""
    from . import sweep

    rows, notes = [], {}
    for index, size in enumerate(sizes, 1):
        logger.info("Size %s (%d of %d)", size, index, len(sizes))
        result = _convert_one(args, size, args.output / str(size))
        rows.append(sweep.SizeRow.of(result))
        for note in result.notes:
            notes.setdefault(note, []).append(str(size))
    md_path, _ = sweep.save(args.output, rows)
    print(sweep.render(rows))
    print(f"Each size's models and reports are in {args.output}/<size>/; this table is {md_path}")
    for note, where in notes.items():
        print(f"note ({', '.join(where)}): {note}")
    return sweep.exit_code(rows)


def _print_result(args: argparse.Namespace, result) -> None:
    print(f"Wrote {result.out_dir}/:")
    for name, path in result.files.items():
        print(f"  {name:<36} {path.stat().st_size / 2**20:8.2f} MiB")
    image = result.metadata["input"]
    print(f"int8 model input: {image['dtype']} {image['shape']} scale={image['scale']:.8g} "
          f"zero_point={image['zero_point']}")
    for out in result.metadata["outputs"]:
        print(f"  output {out['position']}: {out['name']:<13} {out['dtype']} {out['shape']} "
              f"scale={out['scale']:.6g} zero_point={out['zero_point']}")
    print(result.precheck.render())
    if result.compile is not None:
        print(result.compile.report.render())
    if result.accuracy is not None:
        print(result.accuracy.render())
    if args.layout == "frigate":
        from .frigate import instructions

        compiled = result.compile is not None and result.compile.compiled_model is not None
        print(instructions(result.out_dir, result.imgsz, compiled, result.metadata["labels"]))
    for note in result.notes:
        print(f"note: {note}")


def _edgetpu(args: argparse.Namespace) -> int:
    _require("ai_edge_litert", "Reading a TFLite model", verbose=args.verbose)
    from edge_yolov9.model_file import read_sidecar, write_sidecar

    from .edgetpu import CompilerNotFoundError, ExitCode, compile_for_edgetpu, find_compiler, precheck
    from .metadata import metadata_for_compiled
    from .tflite_model import TFLiteModel

    model = TFLiteModel.from_file(args.model)
    report = precheck(model)
    print(report.render())
    if not args.compile:
        return ExitCode.PRECHECK_FAILED if report.failed else ExitCode.OK
    try:
        compiler = find_compiler(args.compiler)
    except CompilerNotFoundError as err:
        if args.compiler is not None:
            raise
        print(f"note: {err}")
        return ExitCode.COMPILER_MISSING
    out_dir = args.output or args.model.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    result = compile_for_edgetpu(args.model, out_dir, compiler=compiler, min_runtime_version=args.min_runtime_version)
    print(result.report.render())
    source_metadata = read_sidecar(args.model)
    if result.ok and source_metadata is not None:
        compiled = TFLiteModel.from_file(result.compiled_model)
        write_sidecar(result.compiled_model, metadata_for_compiled(source_metadata, compiled))
    return result.exit_code(allow_cpu_ops=args.allow_cpu_ops)


def _add_compiler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compiler", type=Path, help="path of edgetpu_compiler; PATH is searched without it")
    parser.add_argument("--min-runtime-version", type=int_arg(10), metavar="N",
                        help="edgetpu_compiler -m: lowest Edge TPU runtime version the model must run on")
    parser.add_argument("--allow-cpu-ops", action="store_true",
                        help="exit 0 even if the compiler leaves some ops on the CPU")


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = add_command(
        subparsers, "convert", _convert, help="convert a checkpoint to fully int8 TFLite (CPU and Edge TPU)",
        description="Convert an edge-yolov9 checkpoint to a float and a fully int8 TFLite model (int8 weights and "
                    "activations, integer NHWC input, six raw head outputs decoded on the host), calibrated on "
                    "real images. Writes OUT/model_int8.tflite, model_float.tflite, a <model>.json sidecar for "
                    "each (labels, input and output quantization), the Edge TPU precheck report and the int8 "
                    "accuracy report (COCO mAP of PyTorch, float and int8 TFLite on a labelled val set).\n\n"
                    + EXIT_CODES)
    convert.add_argument("--model", type=Path, required=True, help="edge-yolov9 checkpoint (.pt)")
    convert.add_argument("--imgsz", type=CONVERT_INPUT_SIZES.arg(), nargs="+",
                         help=f"input size, {CONVERT_INPUT_SIZES.allowed} (default: the size the model was "
                              "trained at); several sizes convert each into OUT/<WxH>/ and compare them in "
                              "OUT/sizes.md: with --edgetpu, the largest that runs wholly on the Edge TPU")
    convert.add_argument("--calib", type=Path, required=True,
                         help="calibration images: a folder (searched recursively) or a YOLO data.yaml (train split)")
    convert.add_argument("--calib-images", type=int_arg(1), default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                         help="use at most N calibration images, spread evenly over the sorted list; images whose activations "
                              "run far above the others' in a quarter of the layers or more are left out (logged)")
    convert.add_argument("--uint8-io", action="store_true",
                         help="uint8 input and outputs (QUANTIZE ops at the edges) instead of int8")
    convert.add_argument("--layout", choices=LAYOUTS, default="raw",
                         help="outputs: raw = six per-level NHWC maps; frigate = the two (1, N, C) tensors of "
                              "Frigate's Edge TPU yolo-generic detector (box bins, class logits; a 1- or 64-class "
                              "model gets a padding class), with OUT/labelmap.txt and the Frigate config printed")
    accuracy = convert.add_mutually_exclusive_group()  # --val with --no-accuracy would be silently ignored
    accuracy.add_argument("--val", type=Path, metavar="DATA",
                         help="labelled images for the int8 accuracy report: a data.yaml (its val split, scored "
                              "against its val_json when declared) or a COCO json (images in <json dir>/../images); "
                              "default: the val split of --calib when that is a data.yaml")
    convert.add_argument("--max-drop", type=float_arg(0), default=1.0, metavar="AP",
                         help="exit 5 when the int8 model's mAP50-95 is more than AP points (0.01 mAP) below "
                              "the PyTorch model's on the val set")
    accuracy.add_argument("--no-accuracy", action="store_true", help="skip the int8 accuracy report")
    convert.add_argument("--edgetpu", action="store_true", help="also compile for the Coral Edge TPU")
    _add_compiler_options(convert)
    convert.add_argument("-o", "--output", type=Path, required=True, help="output folder")

    edgetpu = add_command(
        subparsers, "edgetpu", _edgetpu, help="check (and compile) a .tflite for the Coral Edge TPU",
        description="Static Edge TPU precheck of a .tflite (exit 1 if it fails); with --compile, run "
                    "edgetpu_compiler and report which ops map to the Edge TPU.\n\n" + EXIT_CODES)
    edgetpu.add_argument("model", type=Path, help="int8 .tflite, e.g. OUT/model_int8.tflite")
    edgetpu.add_argument("--compile", action="store_true", help="run edgetpu_compiler")
    _add_compiler_options(edgetpu)
    edgetpu.add_argument("-o", "--output", type=Path, help="folder for the compiled model (default: beside MODEL)")
