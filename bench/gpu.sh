#!/usr/bin/env bash
# GPU check (one GPU, < 5 minutes): training steps/s with AMP fed by the shard loader and the GPU's idle
# fraction, then MC-dropout export cost at T=128, head-only vs full forwards. Prints numbers for the README.
#   bash bench/gpu.sh [WORKDIR]        (needs the package installed: pip install -e .)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-$(mktemp -d)}
PY=${PYTHON:-python}
export OMP_WAIT_POLICY=PASSIVE
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
T0=$(date +%s)
# 1. a real-size dataset: 2048x1024 demo frames, 480x480 crops
$PY -m cocodag.cli demo-data "$W/world" --frames 24 --val-frames 2 --anomaly-frames 2 --coco-images 40 \
    --frame-size 2048x1024 --workers 8 2>/dev/null
$PY -m cocodag.cli build --cityscapes "$W/world/cityscapes" --coco "$W/world/coco" --out "$W/shards" --crop 480 \
    --cityscapes-crops-per-frame 4 --dag-samples 48 --min-object-area 500 --workers 8 --no-progress
echo "data ready after $(( $(date +%s) - T0 )) s"
# 2. training throughput and GPU idle fraction (DeepLabV3+ R50, batch 8, AMP), loader with and without workers
$PY bench/gpu_train.py --data "$W/shards" --model deeplabv3plus_resnet50 --batch-size 8 --steps 60 --workers 6
$PY bench/gpu_train.py --data "$W/shards" --model deeplabv3plus_resnet50 --batch-size 8 --steps 30 --workers 0
$PY bench/gpu_train.py --data "$W/shards" --model deeplabv3plus_resnet50 --batch-size 8 --steps 30 --workers 6 --no-amp
# 3. MC dropout at T=128: head-only vs full forwards (one 1024x512 and one 480x480 input)
$PY bench/mc.py --device cuda --model deeplabv3plus_resnet50 --size 480 --samples 128 --sample-batch 16 --repeats 2
$PY bench/mc.py --device cuda --model deeplabv3plus_resnet18 --size 480 --samples 128 --sample-batch 16 --repeats 2
# 4. loader throughput alone (device-ready batches), shards vs on-the-fly
$PY bench/loader.py --device cuda --workers 6 --otf-batches 4 --shard-batches 40
echo "total $(( $(date +%s) - T0 )) s"
