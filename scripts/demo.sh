#!/usr/bin/env bash
# The main job end to end on built-in defaults, on a CPU:
#   1. train yolov9-t (with its PGI auxiliary branch) on the built-in synthetic shapes dataset,
#   2. convert the trained model to a fully int8 TFLite model (and check it against the Edge TPU rules),
#   3. detect objects in held-out images with the int8 model, writing annotated images.
# EPOCHS (default 4) sets the training length; results go to runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EY=.venv/bin/edge-yolov9
EPOCHS=${EPOCHS:-4}
DATA=$(.venv/bin/python -c "from edge_yolov9.train.synthetic import builtin_dataset; print(builtin_dataset())")
DATA_DIR=$(dirname "$DATA")

$EY train --model yolov9-t --data shapes --imgsz 320 --epochs "$EPOCHS" --batch 16 --nominal-batch 16 \
    --close-mosaic 1 --warmup-epochs 1 --project runs/demo --name train --exist-ok
$EY convert --model runs/demo/train/best.pt --calib "$DATA" --calib-images 64 -o runs/demo/int8
$EY val --model runs/demo/train/best.pt --data "$DATA" --batch 16
$EY detect runs/demo/int8/model_int8.tflite "$DATA_DIR/images/val" --save runs/demo/detections \
    --json runs/demo/detections.jsonl
echo
echo "Done: int8 model in runs/demo/int8/, annotated detections in runs/demo/detections/"
