#!/usr/bin/env bash
# One GPU session's measurements, for the device tool (docs/BENCHMARKS.md keeps the figures).
#
# Assets travel in carried folders .devcarry/g0, g1, ... (models, clips: .cache is not part of
# the working tree); `tools/gpu_session.sh stash` copies the carried ones into /tmp/assets, and
# `tools/gpu_session.sh tests|teardown|bench|loop|parity|streams|soak|cputests|slicer|post` runs one group of measurements with
# .cache/assets pointing there, writing logs under $OUT. The staged wheels (onnxruntime-gpu,
# PyNvVideoCodec, the project's pure dependencies: ../shared/device/stage-wheels.sh) must be in
# /tmp/site. Each group stays under the device tool's 10-minute command limit.
set -uo pipefail
cmd=${1:-}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/assets/models /tmp/assets/video /tmp/assets/samples
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} QT_QPA_PLATFORM=offscreen PYTHONUNBUFFERED=1

link_assets() {
  mkdir -p .cache
  rm -rf .cache/assets
  ln -s /tmp/assets .cache/assets
}

gpu_config() {  # $1: output file; $2...: key=value overrides (dotted) on config/gpu.yaml
  out=$1; shift
  python3 - "$out" "$@" <<'EOF'
import sys, yaml
out, *changes = sys.argv[1:]
d = yaml.safe_load(open("config/gpu.yaml"))
for ch in changes:
    key, value = ch.split("=", 1)
    node = d
    *parents, last = key.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = yaml.safe_load(value)
yaml.safe_dump(d, open(out, "w"))
EOF
}

compare_counts() {  # $1: GPU run's database, $2: CPU run's; prints each frame's detection counts
  python3 - "$1" "$2" <<'EOF'
import sqlite3, sys
q = "SELECT frame_index, detection_count FROM frames ORDER BY frame_index"
g, c = (dict(sqlite3.connect(db).execute(q).fetchall()) for db in sys.argv[1:3])
for i in sorted(set(g) | set(c)):
    a, b = g.get(i), c.get(i)
    rel = None if not a or not b else abs(a - b) / b
    print(f"frame {i}: gpu {a} cpu {b} rel {rel}")
EOF
}

case "$cmd" in
stash)
  for g in .devcarry/g*; do
    [ -d "$g" ] || continue
    for f in "$g"/*; do
      case "$f" in
        *.onnx) cp "$f" /tmp/assets/models/ ;;
        *.mp4|*.avi) cp "$f" /tmp/assets/video/ ;;
        *.npz) cp "$f" /tmp/assets/samples/ ;;
      esac
    done
  done
  ls -la /tmp/assets/*
  ;;
tests)
  link_assets
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/card.txt" 2>&1
  python3 -c "import onnxruntime as o, cupy; print('onnxruntime', o.__version__, o.get_available_providers()); print('cupy', cupy.__version__)" >> "$OUT/card.txt" 2>&1
  timeout 420 python3 -m pytest -q -m gpu -rs tests/gpu --ignore=tests/gpu/test_teardown.py > "$OUT/gpu_tests.txt" 2>&1
  echo "gpu tests rc=$?" >> "$OUT/gpu_tests.txt"
  timeout 120 python3 -m pytest -q tests/test_colour.py > "$OUT/colour_tests.txt" 2>&1
  echo "colour tests rc=$?" >> "$OUT/colour_tests.txt"
  tail -n 5 "$OUT/gpu_tests.txt" "$OUT/colour_tests.txt"
  ;;
bench)
  link_assets
  gpu_config /tmp/bench_fast.yaml streams.0.loop=true storage.db_path=/tmp/bench.db
  timeout 280 python3 main.py bench --config /tmp/bench_fast.yaml --frames 300 --fusion STRICT_SYNC ASYNC_OVERLAY \
    --scenario e2e sequential --out "$OUT/bench_fast" > "$OUT/bench_fast.txt" 2>&1
  echo "bench fast rc=$?" >> "$OUT/bench_fast.txt"
  timeout 280 python3 main.py bench --config /tmp/bench_fast.yaml --realtime --frames 300 \
    --fusion STRICT_SYNC ASYNC_OVERLAY RAW_STREAM_WITH_METADATA --scenario e2e --out "$OUT/bench_rt" > "$OUT/bench_rt.txt" 2>&1
  echo "bench realtime rc=$?" >> "$OUT/bench_rt.txt"
  tail -25 "$OUT/bench_fast.txt" "$OUT/bench_rt.txt"
  ;;
teardown)
  link_assets
  # the GPU demo in ten processes in a row (tests/gpu/test_teardown.py): each exits 0, runs closed
  TEARDOWN_LOGS="$OUT/teardown_logs" timeout 560 python3 -m pytest -q -rs -p no:cacheprovider tests/gpu/test_teardown.py > "$OUT/teardown.txt" 2>&1
  echo "teardown rc=$?" >> "$OUT/teardown.txt"
  tail -8 "$OUT/teardown.txt"
  ;;
loop)
  link_assets
  gpu_config /tmp/loop.yaml streams.0.realtime=true storage.db_path=/tmp/loop.db max_frames=120
  for i in $(seq 10); do
    timeout 100 python3 main.py headless --config /tmp/loop.yaml --quiet > "$OUT/loop_$i.txt" 2>&1
    echo "process $i rc=$?"
  done > "$OUT/loop.txt"
  python3 - >> "$OUT/loop.txt" <<'EOF'
import sqlite3
con = sqlite3.connect("/tmp/loop.db")
print(con.execute("SELECT id, status, ended_at IS NOT NULL, (SELECT COUNT(*) FROM frames f WHERE f.run_id = r.id), "
                  "(SELECT COUNT(fused_count) FROM frames f WHERE f.run_id = r.id) FROM runs r ORDER BY id").fetchall())
EOF
  grep -h "CUDA failure\|Traceback\|Aborted" "$OUT"/loop_*.txt | head -5 >> "$OUT/loop.txt"
  cat "$OUT/loop.txt"
  ;;
parity)
  link_assets
  # The same 5 frames of the 4K demo through the GPU path and the CPU path (the same detector,
  # fp32 on both, tracking off so the per-frame detection counts compare directly).
  gpu_config /tmp/par_gpu.yaml storage.db_path=/tmp/par_gpu.db max_frames=5 fusion.strategy=STRICT_SYNC \
    tracking.enabled=false branches.density.enabled=false models.person.path=.cache/assets/models/person_yolov8s.dyn.onnx
  timeout 200 python3 main.py headless --config /tmp/par_gpu.yaml --quiet > "$OUT/parity_gpu.txt" 2>&1
  python3 - <<'EOF'
import yaml
d = yaml.safe_load(open("/tmp/par_gpu.yaml"))
d["streams"][0]["decoder"] = "pyav"
d["backend"]["device"] = "cpu"
d["backend"]["onnxruntime"]["providers"] = ["CPUExecutionProvider"]
d["storage"]["db_path"] = "/tmp/par_cpu.db"
yaml.safe_dump(d, open("/tmp/par_cpu.yaml", "w"))
EOF
  timeout 300 python3 main.py headless --config /tmp/par_cpu.yaml --quiet > "$OUT/parity_cpu.txt" 2>&1
  compare_counts /tmp/par_gpu.db /tmp/par_cpu.db > "$OUT/parity.txt" 2>&1
  cat "$OUT/parity.txt"
  # as shipped: gpu.yaml's detector (fp16) against pipeline.yaml's (the int8 copy), same 5 frames
  python3 - <<'EOF'
import yaml
for src, dst, db in (("config/gpu.yaml", "/tmp/ps_gpu.yaml", "/tmp/ps_gpu.db"), ("config/pipeline.yaml", "/tmp/ps_cpu.yaml", "/tmp/ps_cpu.db")):
    d = yaml.safe_load(open(src))
    d["storage"]["db_path"] = db; d["max_frames"] = 5; d["fusion"]["strategy"] = "STRICT_SYNC"
    d.setdefault("tracking", {})["enabled"] = False; d["branches"]["density"]["enabled"] = False
    d["streams"][0]["uri"] = ".cache/assets/video/demo_4k_hevc.mp4"
    yaml.safe_dump(d, open(dst, "w"))
EOF
  timeout 200 python3 main.py headless --config /tmp/ps_gpu.yaml --quiet > "$OUT/parity_shipped_gpu.txt" 2>&1
  timeout 300 python3 main.py headless --config /tmp/ps_cpu.yaml --quiet > "$OUT/parity_shipped_cpu.txt" 2>&1
  compare_counts /tmp/ps_gpu.db /tmp/ps_cpu.db > "$OUT/parity_shipped.txt" 2>&1  # gpu: fp16, cpu: int8
  cat "$OUT/parity_shipped.txt"
  ;;
streams)
  link_assets
  # N copies of the 4K demo at once in one process, paced at the clip's rate (30 frames/s)
  gpu_config /tmp/streams.yaml streams.0.loop=true storage.db_path=/tmp/streams.db
  for n in 2 3; do
    timeout 280 python3 main.py bench --config /tmp/streams.yaml --realtime --frames 300 --fusion STRICT_SYNC \
      --scenario e2e --streams $n --out "$OUT/bench_streams$n" > "$OUT/bench_streams$n.txt" 2>&1
    echo "bench streams $n rc=$?" >> "$OUT/bench_streams$n.txt"
  done
  tail -12 "$OUT"/bench_streams*.txt
  ;;
soak)
  link_assets
  # the soak test (CPU path, vtest looping, 10,000 frames after 1,000 of warm-up) on this host's cores
  SOAK_FRAMES=${SOAK_FRAMES:-10000} timeout 560 python3 -m pytest -q -s -m soak tests/test_soak.py -p no:cacheprovider \
    > "$OUT/soak.txt" 2>&1
  echo "soak rc=$?" >> "$OUT/soak.txt"
  tail -6 "$OUT/soak.txt"
  ;;
cputests)
  link_assets
  # CPU tests that need many cores to finish quickly (the vtest detector pass of the tracking tests)
  timeout 560 python3 -m pytest -q -p no:cacheprovider tests/test_tracking.py tests/test_bytetrack.py > "$OUT/cpu_tests.txt" 2>&1
  echo "cpu tests rc=$?" >> "$OUT/cpu_tests.txt"
  tail -6 "$OUT/cpu_tests.txt"
  ;;
slicer)
  link_assets
  # The CPU comparison with supervision's InferenceSlicer on 2 pinned cores of this quiet host (the
  # 2-core acceptance without the shared dev machine's noise): 2 ORT threads on both sides.
  # supervision comes with the staged wheels; a symlinked python3 misses the system numpy, a wrapper does not
  mkdir -p /tmp/svenv/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/svenv/bin/python && chmod +x /tmp/svenv/bin/python
  python3 - <<'EOF'
import yaml
d = yaml.safe_load(open("config/bench_cpu_detector_4k.yaml"))
d["backend"]["onnxruntime"]["intra_op_threads"] = 2
d["storage"]["db_path"] = "/tmp/slicer.db"
yaml.safe_dump(d, open("/tmp/slicer.yaml", "w"))
EOF
  timeout 500 taskset -c 0,1 python3 tools/compare_supervision.py --config /tmp/slicer.yaml --repeat 3 --sv-batch-size 1 32 \
    > "$OUT/slicer.txt" 2>&1
  echo "slicer rc=$?" >> "$OUT/slicer.txt"
  # the same int8 file on both sides: what the pipeline adds or saves beyond the model's precision
  timeout 300 taskset -c 0,1 python3 tools/compare_supervision.py --config /tmp/slicer.yaml --repeat 3 --sv-batch-size 1 \
    --sv-model .cache/assets/models/person_yolov8s.dyn.int8.onnx > "$OUT/slicer_int8.txt" 2>&1
  echo "slicer int8 rc=$?" >> "$OUT/slicer_int8.txt"
  tail -8 "$OUT/slicer.txt" "$OUT/slicer_int8.txt"
  ;;
post)
  link_assets
  # the YOLO post-processing alone per branch call: the one-kernel decode against the compact path
  timeout 200 python3 tools/bench_postprocess.py --iters 200 > "$OUT/post.txt" 2>&1
  echo "post rc=$?" >> "$OUT/post.txt"
  cat "$OUT/post.txt"
  ;;
*)
  echo "usage: $0 stash|tests|teardown|bench|loop|parity|streams|soak|cputests|slicer|post"; exit 2 ;;
esac
