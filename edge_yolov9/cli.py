"""The ``edge-yolov9`` command.

Sub-commands come from the ``edge_yolov9.commands`` entry points: each is a ``register(subparsers)``
function of a package (``edge_yolov9.train``, ``.convert``, ``.daemon``) that adds its parsers with a
``handler``. The runtime thus imports none of those packages, and a sub-command whose extra is not
installed still shows in ``--help`` and says what to install.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import EdgeYoloError
from .model_file import STRIDES, InputSize

logger = logging.getLogger("edge_yolov9")
COMMANDS_GROUP = "edge_yolov9.commands"
MAX_STRIDE = max(STRIDES)

Handler = Callable[[argparse.Namespace], int]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and descriptions kept as written. An option without a default (None) says in its
    own help what happens without it, so '(default: None)' is not added."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def plural(count: int, noun: str) -> str:
    """``1 class``, ``3 classes``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def add_command(subparsers: argparse._SubParsersAction, name: str, handler: Handler, *, help: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command; ``description`` (the long help) defaults to ``help``."""
    parser = subparsers.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def int_arg(low: int | None = None, high: int | None = None, *, multiple_of: int | None = None,
            hint: str = "") -> Callable[[str], int]:
    """An argparse ``type`` that takes an integer in [low, high] (a bound of None is open), refused at parse
    time with the allowed range, so no command starts work on a value it cannot use."""
    allowed = _allowed("an integer", low, high, False, False)
    if multiple_of:
        allowed += f", a multiple of {multiple_of}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use {allowed}{hint}") from None
        if not _in_range(value, low, high, multiple_of):
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {allowed}{hint}")
        return value

    return parse


def _in_range(value: int, low: int | None, high: int | None, multiple_of: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high) and not (multiple_of and value % multiple_of)


def float_arg(low: float | None = None, high: float | None = None, *, low_open: bool = False,
              high_open: bool = False, hint: str = "") -> Callable[[str], float]:
    """An argparse ``type`` that takes a finite number in the range (``low_open``: low itself excluded)."""
    allowed = _allowed("a number", low, high, low_open, high_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; use {allowed}{hint}") from None
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"{text} is out of range; use {allowed}{hint}")
        return value

    return parse


def _allowed(kind: str, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    lower = None if low is None else f"{'above' if low_open else 'at least' if high is not None else 'of at least'} {low}"
    upper = None if high is None else f"{'below' if high_open else 'at most'} {high}"
    if lower and upper and not (low_open or high_open):
        return f"{kind} from {low} to {high}"
    return " ".join([kind] + [" and ".join(part for part in (lower, upper) if part)])


@dataclass(frozen=True)
class InputSizes:
    """The network input sizes a command takes: each side a multiple of the largest stride from ``low`` to
    ``high``; a square (320) or WIDTHxHEIGHT (384x224). Defined once per use below, and checked the same way
    at parse time (:meth:`arg`) and for API callers and sizes read from a model (:meth:`check`)."""

    low: int
    high: int
    purpose: str  # what the sizes are for, as errors name it

    @property
    def allowed(self) -> str:
        return (f"one size or WIDTHxHEIGHT, each side a multiple of {MAX_STRIDE} from {self.low} to {self.high} "
                "(e.g. 320, or 384x224 for a 16:9 camera)")

    def arg(self) -> Callable[[str], InputSize]:
        """The argparse ``type``."""
        def parse(text: str) -> InputSize:
            try:
                return self.check(text, "--imgsz")
            except (ValueError, EdgeYoloError) as err:
                raise argparse.ArgumentTypeError(f"{text!r} is not a supported size; use {self.allowed}") from err
        return parse

    def check(self, size: Any, source: str) -> InputSize:
        """``size`` (an int, a (height, width) pair or text) if allowed; otherwise an EdgeYoloError naming it,
        where it came from (``source``) and the sizes allowed."""
        try:
            parsed = InputSize.of(size)
        except ValueError:
            parsed = None
        if parsed is None or not all(_in_range(side, self.low, self.high, MAX_STRIDE) for side in parsed):
            shown = size if parsed is None or isinstance(size, (int, str)) else parsed
            raise EdgeYoloError(f"Input size {shown} ({source}) is not supported for {self.purpose}",
                                f"pass --imgsz with {self.allowed}")
        return parsed


# Training, validation and the zoo's figures: below 64 px the P5 map is 2x2; above 1280 nothing fits a small
# detector. Conversion: from 160 (a 5x5 P5 map; Edge TPU users go down to 192 or 224 to keep every op on the
# chip) to 640, the size YOLOv9 is published at.
MODEL_INPUT_SIZES = InputSizes(64, 1280, "training and validation")
CONVERT_INPUT_SIZES = InputSizes(160, 640, "conversion")


def existing_file(text: str) -> Path:
    """An argparse ``type`` for a file that must exist (a folder or an empty string is refused)."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("an empty path; pass a file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; pass a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist; check the path")
    return path


def print_result(result: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print a command's result as JSON (``--json``) or as text for people."""
    print(json.dumps(result, indent=2) if as_json else render(result))


def command_entry_points() -> list[Any]:
    """The ``edge_yolov9.commands`` entry points, by name. Python 3.9's ``entry_points()`` takes no
    ``group`` and returns a dict; 3.10+ returns a selectable collection."""
    found = entry_points()
    group = found.select(group=COMMANDS_GROUP) if hasattr(found, "select") else found.get(COMMANDS_GROUP, ())
    return sorted(group, key=lambda e: e.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-yolov9", formatter_class=HelpFormatter,
        description="YOLOv9 for the edge: train GELAN-T/S with PGI, convert to fully int8 TFLite for the "
                    "Coral Edge TPU, detect on a Raspberry Pi.")
    parser.add_argument("--version", action="version", version=f"edge-yolov9 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for entry in command_entry_points():
        try:
            register = entry.load()
        except Exception as err:  # one broken plugin must not take the runtime's commands down
            logger.warning("Commands of %r are unavailable: %s", entry.value, err)
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except EdgeYoloError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
