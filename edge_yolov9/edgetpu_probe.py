"""Which interpreter goes with the installed libedgetpu, and proof that the pair works before this process
loads it.

libedgetpu is a TFLite delegate compiled against one TensorFlow version; with an interpreter of another
version it crashes the process that loads it (a segfault while the delegate is applied to the graph),
which no ``try`` can catch. So before the calling process loads the delegate, a short-lived child
(``python -m edge_yolov9.edgetpu_probe``) loads it with the model and runs one inference, within
``EDGE_YOLOV9_PROBE_TIMEOUT`` seconds (default 20). A crash, abort, hang or failed load there becomes a
RuntimeSetupError naming the library, the interpreter and the pair to install. A pair that passed is
remembered per library file (path, size, mtime), interpreter version and device in
``$XDG_CACHE_HOME/edge-yolov9/edgetpu-probes.json`` (default ``~/.cache``), so the probe is paid once, together
with the Edge TPUs the machine showed (USB bus and device numbers, /dev/apex_N): once they change (a Coral
unplugged, moved or re-plugged), the remembered pass says nothing about them and the probe runs again, since
libedgetpu may abort the process that opens a device that is gone (edgetpu#629).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .host import ROOT, apex_nodes, coral_usb_devices
from .interpreter import (BACKENDS, Device, EdgeTpuLibrary, RuntimeSetupError, tpu_diagnosis, installed_backends,
                          require_libedgetpu)

logger = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "EDGE_YOLOV9_PROBE_TIMEOUT"
DEFAULT_TIMEOUT = 20.0
CACHE_NAME = "edgetpu-probes.json"
SAME = "same"  # a pairing rule for "the interpreter's version is the library's TensorFlow version"

# The known pairings of a libedgetpu build and an interpreter: the only place the project names them.
# Sources (public threads; /work/shared/notes/coral-field.md gathers them):
# - Coral's apt libedgetpu1-std/-max 16.0 is built against TF 2.5 and ships with pycoral 2.0, whose
#   interpreter is tflite-runtime 2.5.0.post1 (coral.ai "Get started"; pycoral requirements).
# - tflite-runtime 2.12 and newer segfault with Coral's 16.0: google-coral/edgetpu#812,
#   google-coral/libedgetpu#53, tensorflow/tensorflow#62371, oberluz/pycoral#13 (2.13, Python 3.11).
# - Community builds `libedgetpu1-std|max_16.0tfX.Y.Z` (github.com/feranick/libedgetpu; libedgetpu PRs
#   #63, #70) work with tflite_runtime X.Y.Z (github.com/feranick/TFlite-builds); tensorflow#62371 reports
#   them working on a Pi 5 with Python 3.11. Frigate 0.17-0.18 ships libedgetpu1-max 16.0tf2.17.1 with
#   tflite_runtime 2.17.1 (docker/main/install_deps.sh, requirements-wheels.txt).
# - No public report has ai-edge-litert working with any libedgetpu: it has no row, so it is "unknown".
# Each row: (library's TF version, interpreter, lowest and highest interpreter version (major.minor, None:
# open), verdict, source).
PAIRINGS: tuple[tuple[str, str, str | None, str | None, str, str], ...] = (
    ("2.5", "tflite-runtime", "2.5", "2.5", "works", "Coral's own pair (pycoral 2.0)"),
    ("2.5", "tflite-runtime", "2.12", None, "crashes",
     "google-coral/edgetpu#812, google-coral/libedgetpu#53, tensorflow/tensorflow#62371"),
    (SAME, "tflite-runtime", None, None, "works",
     "feranick/libedgetpu with feranick/TFlite-builds; Frigate ships 16.0tf2.17.1 with 2.17.1"),
)
RECOMMENDED_PAIR = ("libedgetpu1-max 16.0tf2.17.1 (github.com/feranick/libedgetpu/releases) with tflite_runtime "
                    "2.17.1 (github.com/feranick/TFlite-builds/releases; Python 3.11), the pair Frigate ships")
_ORDER = {"works": 0, "unknown": 1, "crashes": 2}


def _minor(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string ('2.17.1' -> (2, 17)); () when it has none."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def pairing(library_tf: str | None, interpreter: str, version: str) -> tuple[str, str]:
    """(verdict, source) of a libedgetpu built against TF ``library_tf`` with ``interpreter`` ``version``:
    'works' and 'crashes' from :data:`PAIRINGS`, else 'unknown'."""
    if library_tf is not None:
        for tf, name, lowest, highest, verdict, source in PAIRINGS:
            if name != interpreter:
                continue
            if tf == SAME:
                if _minor(version) == _minor(library_tf):
                    return verdict, source
            elif _minor(tf) == _minor(library_tf) and (lowest is None or _minor(version) >= _minor(lowest)) \
                    and (highest is None or _minor(version) <= _minor(highest)):
                return verdict, source
    return "unknown", "no known pairing"


def pair_advice(library: EdgeTpuLibrary) -> str:
    """Which interpreter to install for ``library``, or which pair to install instead."""
    if library.tf_version == "2.5":
        return ("Coral's libedgetpu 16.0 is built for TensorFlow 2.5 and crashes with tflite-runtime 2.12 and "
                "newer: pip install tflite-runtime==2.5.0.post1 (Python <= 3.9), or replace it with "
                + RECOMMENDED_PAIR)
    if library.tf_version:
        return (f"this libedgetpu is built for TensorFlow {library.tf_version}: install tflite_runtime "
                f"{library.tf_version} beside it (github.com/feranick/TFlite-builds/releases), or install "
                + RECOMMENDED_PAIR)
    return (f"install a known pair: {RECOMMENDED_PAIR}; no libedgetpu is known to work with ai-edge-litert")


def candidates(library: EdgeTpuLibrary, installed: Sequence[tuple[str, str]],
               prefer: str | None = None) -> list[tuple[str, str, str]]:
    """(name, version, verdict) of the installed interpreters to try with ``library``, best first: a
    known-good pair, then unknown ones (tflite-runtime before ai-edge-litert), known crashes last."""
    if prefer is not None and prefer not in BACKENDS:
        raise RuntimeSetupError(f"Unknown interpreter {prefer!r}", f"choose one of {', '.join(BACKENDS)}")
    rank = {name: i for i, name in enumerate(reversed(list(BACKENDS)))}
    found = [(name, version, pairing(library.tf_version, name, version)[0])
             for name, version in installed if prefer in (None, name)]
    return sorted(found, key=lambda c: (_ORDER[c[2]], rank[c[0]]))


@dataclass(frozen=True)
class ProbeResult:
    """What the probe child did: ``outcome`` is 'ok', 'crash' (killed by a signal), 'hang' (no answer in
    time) or 'error' (a Python-level failure: no device, a library that does not load)."""

    outcome: str
    detail: str
    stage: str = ""      # what the child was doing last: 'import', 'create', 'apply', 'invoke'
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


STAGES = {"import": "importing the interpreter", "create": "creating the delegate",
          "apply": "applying the delegate to the model's graph", "invoke": "running the first inference"}


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edge-yolov9" / CACHE_NAME


def _cache_key(library: EdgeTpuLibrary, interpreter: str, version: str, device: Device) -> str:
    try:
        stat = os.stat(library.path)
        identity = f"{os.path.realpath(library.path)}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        identity = library.path
    return f"{identity}|{interpreter} {version}|{device}"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def visible_edgetpus(device: Device) -> list[str]:
    """The Edge TPUs of ``device``'s kind this machine shows now (empty where it has no sysfs to tell)."""
    usb = [f"usb {coral.name} {coral.ids[0]}:{coral.ids[1]} {coral.node}" for coral in coral_usb_devices()]
    pci = [f"pci {node}" for node in apex_nodes()]
    return {"usb": usb, "pci": pci}.get(device.kind, usb + pci)


def _remember(key: str, devices: list[str]) -> None:
    """Record a passed probe and the Edge TPUs it saw; a cache that cannot be written only means the probe runs
    again next time."""
    path = _cache_file()
    data = _read_cache()
    data[key] = {"ok": True, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "devices": devices}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1))
        os.replace(temporary, path)
    except OSError as err:
        logger.debug("Cannot write the Edge TPU probe cache %s: %s", path, err)


def probe_timeout() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise RuntimeSetupError(f"${TIMEOUT_VARIABLE}={value!r} is not a number of seconds",
                                f"set it to e.g. {DEFAULT_TIMEOUT:g}, or unset it") from None


def probe(library: EdgeTpuLibrary, interpreter: str, version: str, device: Device,
          model: str | os.PathLike | None = None) -> ProbeResult:
    """Load ``library`` as the delegate for ``device`` with ``interpreter`` in a child process; with a
    ``model``, also apply it to the model's graph and run one inference (and remember a pass)."""
    key = _cache_key(library, interpreter, version, device)
    passed = _read_cache().get(key, {}) if model is not None else {}
    if passed.get("ok"):
        devices = visible_edgetpus(device)
        if passed.get("devices", []) == devices:
            return ProbeResult("ok", "passed before (cached)", cached=True)
        logger.info("The Edge TPUs have changed since %s with %s %s passed its probe (then: %s; now: %s): probing "
                    "again", library.path, interpreter, version, "; ".join(passed.get("devices", [])) or "none",
                    "; ".join(devices) or "none")
    timeout = probe_timeout()
    command = [sys.executable, "-m", __name__, "--library", library.path, "--interpreter", interpreter,
               "--options", json.dumps(device.delegate_options())]
    if model is not None:
        command += ["--model", os.fspath(model)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out, err, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as timed_out:  # run() has killed the child
        out, err, code = _text(timed_out.stdout), _text(timed_out.stderr), None
    messages = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    stage = next((m["stage"] for m in reversed(messages) if "stage" in m), "")
    where = f" while {STAGES[stage]}" if stage in STAGES else ""
    if code is None:
        result = ProbeResult("hang", f"did not answer within {timeout:g} s{where} (it was killed)", stage)
    elif code < 0:
        result = ProbeResult("crash", f"crashed ({signal.Signals(-code).name}){where}", stage)
    elif code == 0 and messages and messages[-1].get("ok"):
        result = ProbeResult("ok", "loaded" + (", applied and ran one inference" if model is not None else ""),
                             stage)
    else:
        error = next((m["error"] for m in reversed(messages) if "error" in m), None)
        error = " ".join((error or f"exit code {code}").split())  # one line: it ends up in logs and stats
        result = ProbeResult("error", f"failed{where}: {error}", stage)
    if result.outcome in ("crash", "hang", "error") and err.strip():
        result = ProbeResult(result.outcome, f"{result.detail} [stderr: {err.strip().splitlines()[-1][:300]}]",
                             stage)
    if result.ok and model is not None:
        _remember(key, visible_edgetpus(device))  # after the probe: a USB Coral re-enumerates once its firmware loads
    return result


def _text(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def probe_failure(library: EdgeTpuLibrary, tried: Sequence[tuple[str, str, ProbeResult]],
                  device: Device) -> RuntimeSetupError:
    """The error for interpreters that all failed their probe with ``library``: a crash or hang is the
    pairing (the fix: the pair to install); a clean failure is the device or the library file."""
    said = "; ".join(f"with {name} {version} it {result.detail}" for name, version, result in tried)
    problem = f"The Edge TPU runtime {library} is unusable: {said}"
    if not any(result.outcome in ("crash", "hang") for _, _, result in tried):
        return RuntimeSetupError(problem, tpu_diagnosis(device))
    fix = (pair_advice(library) + "; until then run on the CPU (device='cpu', or 'auto' with the CPU model beside "
           "the Edge TPU model)")
    if (ROOT / "sys" / "bus").is_dir() and not visible_edgetpus(device):
        # libedgetpu may abort when the device is not there (edgetpu#629): the absent device comes first
        fix = f"{tpu_diagnosis(device)}; if it is there and this persists: {fix}"
    return RuntimeSetupError(problem, fix)


def usable_edgetpu(model: str | os.PathLike, device: Device, library: str | os.PathLike | None = None,
                   prefer: str | None = None) -> tuple[EdgeTpuLibrary, str]:
    """The libedgetpu and the interpreter (its name) that the probe saw run ``model`` on ``device``;
    a RuntimeSetupError naming the library, the interpreter and the fix otherwise."""
    found = require_libedgetpu(library)
    tried = []
    choices = candidates(found, installed_backends(), prefer)
    if not choices:
        raise RuntimeSetupError(f"No TFLite interpreter{f' named {prefer}' if prefer else ''} is installed to "
                                f"run the Edge TPU runtime {found}", pair_advice(found))
    for name, version, verdict in choices:
        result = probe(found, name, version, device, model)
        if result.ok:
            if verdict != "works":
                logger.info("%s with %s %s: no known pairing, but the probe passed (%s)", found, name, version,
                            pair_advice(found))
            return found, name
        logger.warning("Edge TPU probe: %s with %s %s %s", found.path, name, version, result.detail)
        tried.append((name, version, result))
    raise probe_failure(found, tried, device)


# ------------------------------------------------------------------------------ the child
def _child(argv: Sequence[str]) -> int:
    """Load the delegate (and run the model) the way the Detector will; report each stage on stdout as a
    JSON line first, so that the parent knows where a crash happened."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core file
    except (ImportError, ValueError, OSError):
        pass
    parser = argparse.ArgumentParser(prog="python -m edge_yolov9.edgetpu_probe")
    parser.add_argument("--library", required=True)
    parser.add_argument("--interpreter", required=True, choices=list(BACKENDS))
    parser.add_argument("--options", default="{}", help="the delegate's options, as JSON")
    parser.add_argument("--model")
    args = parser.parse_args(argv)

    def say(**message) -> None:
        print(json.dumps(message), flush=True)

    try:
        say(stage="import")
        import numpy as np

        from .interpreter import find_backend

        backend = find_backend(args.interpreter)
        say(stage="create")
        delegate = backend.module.load_delegate(args.library, json.loads(args.options))
        if args.model:
            say(stage="apply")
            interpreter = backend.interpreter(model_path=args.model, experimental_delegates=[delegate])
            interpreter.allocate_tensors()
            say(stage="invoke")
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
    except Exception as err:  # whatever it is, the parent reports it
        say(error=f"{type(err).__name__}: {err}".strip())
        return 1
    say(ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
