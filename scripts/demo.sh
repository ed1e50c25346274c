#!/usr/bin/env bash
# The main job end to end on built-in defaults, on a CPU:
#   1. train yolov9-t (with its PGI auxiliary branch) on the built-in synthetic shapes dataset, for MINUTES
#      (default 15) of training: the epochs and the LR schedule are fitted to that budget,
#   2. convert the best model to a fully int8 TFLite model (Edge TPU pre-check, int8 accuracy report),
#   3. detect objects in the held-out images with the int8 model and time it,
#   4. summarize: mAP of PyTorch vs float vs int8, file sizes, latency, and runs/demo/summary.png (annotated
#      detections beside the training curves).
# Results go to runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EY=.venv/bin/edge-yolov9
MINUTES=${MINUTES:-15}
DATA=$(.venv/bin/python -c "from edge_yolov9.train.synthetic import builtin_dataset; print(builtin_dataset())")
DATA_DIR=$(dirname "$DATA")

# The short-run recipe of benchmarks/train_synthetic.py (AdamW, one warm-up epoch, milder scale, no mixup).
$EY train --model yolov9-t --data shapes --imgsz 320 --epochs 30 --time-budget "$MINUTES" --batch 16 \
    --nominal-batch 16 --close-mosaic 2 --warmup-epochs 1 --augment scale=0.5 mixup=0 \
    --project runs/demo --name train --exist-ok
$EY convert --model runs/demo/train/best.pt --calib "$DATA" --calib-images 64 -o runs/demo/int8
rm -rf runs/demo/detections runs/demo/detections.jsonl
$EY detect runs/demo/int8/model_int8.tflite "$DATA_DIR/images/val" --save runs/demo/detections \
    --json runs/demo/detections.jsonl
for variant in float int8; do
    $EY bench "runs/demo/int8/model_$variant.tflite" --image "$(ls "$DATA_DIR"/images/val/* | head -1)" --json \
        > "runs/demo/bench_$variant.json"
done
echo
.venv/bin/python scripts/demo_summary.py runs/demo
