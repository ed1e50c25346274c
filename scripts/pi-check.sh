#!/usr/bin/env bash
# Install the runtime as a Raspberry Pi user would and check that it detects what the host detects.
#
# On a Debian/Ubuntu x86_64 machine, as root: builds the wheel from a copy of this tree, makes Debian 12
# (Bookworm, what Raspberry Pi OS Bookworm is built on) root filesystems for arm64 (and, with --armhf, armhf),
# installs the wheel in each the way the README's Raspberry Pi section says, runs `doctor`, `detect` and
# `bench` there under QEMU user emulation with an ARM CPU model, and compares the detections with the host's.
# Not part of the test suite (15+ minutes); run it before each release and record the outcome in
# benchmarks/RESULTS.md.
#
#   sudo bash scripts/pi-check.sh [--armhf] [--model M.tflite | --checkpoint C.pt] [--work DIR] [--fresh]
#
# Without --model or --checkpoint it trains gelan-t for a few epochs on the built-in data and converts it.
# Root filesystems are kept in the work folder (default /var/tmp/edge-yolov9-pi-check) and reused; --fresh
# makes them anew. Exit code 0 when every architecture installed, ran and agreed with the host.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ARCHES=(arm64)
MODEL=""
CHECKPOINT=""
WORK=/var/tmp/edge-yolov9-pi-check
FRESH=0
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CPU_ARM64=${CPU_ARM64:-cortex-a72}   # a Pi 4's core (a Pi 5's cortex-a76 gave the same outputs)
CPU_ARMHF=${CPU_ARMHF:-cortex-a7}    # the oldest ARMv7 core with the NEON that tflite-runtime needs
CONF=0.02                            # low, so that the comparison has many boxes to compare
while [ $# -gt 0 ]; do
    case $1 in
        --armhf) ARCHES+=(armhf) ;;
        --model) MODEL=$(realpath "$2"); shift ;;
        --checkpoint) CHECKPOINT=$(realpath "$2"); shift ;;
        --work) WORK=$2; shift ;;
        --fresh) FRESH=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "pi-check: $*" >&2; exit 2; }
step() { echo; echo "== $*"; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and binfmt_misc need it): sudo bash $0"
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get)"
[ "$(uname -m)" = x86_64 ] || die "runs on an x86_64 host; on a Pi, install as the README says and run doctor"
mkdir -p "$WORK"
WORK=$(realpath "$WORK")

qemu_major() { "qemu-$1-static" --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1; }

step "host tools: debootstrap and QEMU >= 8 user emulation"
# QEMU 7 (Debian 12's own) passes the host's /proc/cpuinfo to the guest and ai-edge-litert segfaults reading it.
if [ "$(qemu_major aarch64 || true)" = "" ] || [ "$(qemu_major aarch64)" -lt 8 ] || ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    candidate=$(apt-cache policy qemu-user-static | sed -n 's/ *Candidate: [0-9]*:\{0,1\}\([0-9]*\)\..*/\1/p')
    if [ "${candidate:-0}" -lt 8 ] && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
        echo "deb $MIRROR bookworm-backports main" > /etc/apt/sources.list.d/edge-yolov9-backports.list
        apt-get update -q
        apt-get install -y -q -t bookworm-backports qemu-user-static debootstrap
    else
        apt-get install -y -q qemu-user-static debootstrap
    fi
fi
[ "$(qemu_major aarch64)" -ge 8 ] || die "QEMU $(qemu_major aarch64) is too old (ai-edge-litert crashes under QEMU 7): install qemu-user-static 8 or newer (Debian 12: bookworm-backports; Ubuntu 24.04 has 8.2)"
echo "QEMU $(qemu-aarch64-static --version | head -1 | awk '{print $3}')"

register_binfmt() {  # $1: qemu's name of the architecture (aarch64, arm)
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e "/proc/sys/fs/binfmt_misc/qemu-$1" ] && return
    local conf=/usr/lib/binfmt.d/qemu-$1.conf
    if [ -f "$conf" ]; then
        # The F flag opens the interpreter now, so it also runs inside the chroot.
        cat "$conf" > /proc/sys/fs/binfmt_misc/register
    else
        update-binfmts --enable "qemu-$1" 2>/dev/null || die "cannot register qemu-$1 with binfmt_misc"
    fi
}

step "host venv and the wheel, built from a copy of this tree"
bash scripts/setup.sh
rm -rf "$WORK/src" "$WORK/dist"
mkdir -p "$WORK/src" "$WORK/dist"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src" 2>/dev/null || true
.venv/bin/python -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/edge_yolov9-*.whl)
echo "$WHEEL"

step "the model"
EY=$ROOT/.venv/bin/edge-yolov9
DATA=$(.venv/bin/python -c "from edge_yolov9.train.synthetic import builtin_dataset; print(builtin_dataset())")
if [ -z "$MODEL" ]; then
    if [ -z "$CHECKPOINT" ]; then
        $EY train --model gelan-t --data shapes --imgsz 320 --epochs 3 --batch 16 --nominal-batch 16 \
            --close-mosaic 1 --warmup-epochs 1 --project "$WORK" --name train --exist-ok
        CHECKPOINT=$WORK/train/best.pt
    fi
    $EY convert --model "$CHECKPOINT" --calib "$DATA" --calib-images 32 --no-accuracy -o "$WORK/model"
    MODEL=$WORK/model/model_int8.tflite
fi
rm -rf "$WORK/share"
mkdir -p "$WORK/share/images" "$WORK/share/out"
cp "$MODEL" "$WORK/share/model.tflite"
[ -f "${MODEL%.tflite}.json" ] && cp "${MODEL%.tflite}.json" "$WORK/share/model.json"
find "$(dirname "$DATA")/images/val" -type f | sort | head -20 | xargs cp -t "$WORK/share/images"
cp "$WHEEL" "$WORK/share/"
$EY detect "$WORK/share/model.tflite" "$WORK/share/images" --device cpu --conf $CONF --json "$WORK/share/out/host.jsonl"

release() {  # unmount what is mounted under $1 (also what a killed run left), deepest first
    local point
    for point in $(findmnt -rn -o TARGET | grep "^$1/" | sort -r); do umount -l "$point"; done
}
trap 'for arch in "${ARCHES[@]}"; do release "$WORK/rootfs-$arch"; done' EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; }

make_rootfs() {  # $1: Debian architecture; the root filesystem is $WORK/rootfs-$1
    local rootfs=$WORK/rootfs-$1
    release "$rootfs"  # never delete through a bind mount of the host's /dev
    if [ $FRESH = 1 ] || [ ! -f "$rootfs/.complete" ]; then
        rm -rf --one-file-system "$rootfs"
        debootstrap --arch="$1" --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "$MIRROR"
        touch "$rootfs/.complete"
    fi
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    # The host's certificate authorities, so that pip works behind the same TLS-inspecting proxy as the host.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/host-ca-certificates.crt"
    bind /proc "$rootfs/proc"
    bind /sys "$rootfs/sys"
    bind /dev "$rootfs/dev"
    bind "$WORK/share" "$rootfs/mnt/check"
}

in_pi() {  # $1: architecture, then a shell command run in its root filesystem as a Pi user's shell would
    local arch=$1; shift
    local cpu=$CPU_ARM64; [ "$arch" = armhf ] && cpu=$CPU_ARMHF
    local passed=() name
    for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
        if [ -n "${!name:-}" ]; then passed+=("$name=${!name}"); fi
    done
    QEMU_CPU=$cpu chroot "$WORK/rootfs-$arch" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
        QEMU_CPU="$cpu" PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "${passed[@]}" /bin/bash -c "set -euo pipefail; $*"
}

FAILED=()
for arch in "${ARCHES[@]}"; do
    step "$arch: Debian 12 root filesystem"
    register_binfmt "$([ "$arch" = arm64 ] && echo aarch64 || echo arm)"
    make_rootfs "$arch"
    step "$arch: install as the README says"
    # --only-binary: on a Pi a missing wheel means compiling numpy for half an hour; here it is a failure.
    if [ "$arch" = arm64 ]; then
        install="rm -rf /opt/ey && python3 -m venv /opt/ey \
            && /opt/ey/bin/pip install -q --only-binary :all: /mnt/check/$(basename "$WHEEL")"
    else
        install="DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-numpy python3-pil python3-venv \
            && rm -rf /opt/ey && python3 -m venv --system-site-packages /opt/ey \
            && /opt/ey/bin/pip install -q --only-binary :all: /mnt/check/$(basename "$WHEEL")"
    fi
    start=$(date +%s)
    if ! in_pi "$arch" "$install"; then FAILED+=("$arch: install"); continue; fi
    echo "installed in $(( $(date +%s) - start )) s: $(in_pi "$arch" "/opt/ey/bin/pip list 2>/dev/null | grep -iE 'edge|litert|tflite|numpy|pillow' | tr -s ' ' | paste -sd ','")"
    step "$arch: doctor, detect, bench ($([ "$arch" = arm64 ] && echo "$CPU_ARM64" || echo "$CPU_ARMHF"))"
    in_pi "$arch" "uname -m; /opt/ey/bin/edge-yolov9 doctor --model /mnt/check/model.tflite" \
        || FAILED+=("$arch: doctor")
    in_pi "$arch" "rm -f /mnt/check/out/$arch.jsonl; /opt/ey/bin/edge-yolov9 detect /mnt/check/model.tflite \
        /mnt/check/images --device cpu --conf $CONF --json /mnt/check/out/$arch.jsonl" || FAILED+=("$arch: detect")
    in_pi "$arch" "/opt/ey/bin/edge-yolov9 bench /mnt/check/model.tflite --runs 10 --warmup 2" \
        || FAILED+=("$arch: bench")
    step "$arch: detections against the host's"
    .venv/bin/python scripts/compare_detections.py "$WORK/share/out/host.jsonl" "$WORK/share/out/$arch.jsonl" \
        || FAILED+=("$arch: detections differ from the host's")
done

step "summary"
if [ ${#FAILED[@]} = 0 ]; then
    echo "pi-check passed on ${ARCHES[*]} (QEMU $(qemu_major aarch64), wheel $(basename "$WHEEL"))"
else
    printf 'pi-check FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
