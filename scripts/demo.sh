#!/usr/bin/env bash
# The main job on built-in defaults. It grows as the pipeline lands: today it sets up the environment
# and shows the model zoo; training on built-in data, int8 conversion and detection follow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/edge-yolov9 models
