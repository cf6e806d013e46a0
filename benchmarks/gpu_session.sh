#!/usr/bin/env bash
# One device call: install carried wheels + the package, then run the named steps; logs and CSV/PNG under $OUT.
# Usage (on the GPU host, repo root):  bash benchmarks/gpu_session.sh STEP...   steps (each benchmark runs as a
# module of the benchmarks package from the repo root, python3 -m benchmarks.NAME):
#   sanity (cascade check of the template on this GPU; stops the session if the default genome fails), tests (-m gpu;
#   GPU_TESTS narrows the files),
#   campaign (run or resume CAMPAIGN=search/h100-core.toml into CAMPAIGN_DB for one CAMPAIGN_SLICE-minute slice),
#   export (the store's promoted records as $OUT/bundle), attention (ATTN_SUITE, default issue7), models
#   (MODEL_CASES / MODEL_ARGS, e.g. --seed-baseline), variants / variants-training (template A/B, VARIANT_ARGS /
#   VARIANT_TRAIN_ARGS, e.g. "--variants @benchmarks/variant_sets/hopper-bwd.json"; variants=NAME: VARIANT_ARGS_NAME,
#   CSV variants-NAME.csv, several per session), search (the 5-minute smoke search), overhead (host cost per call,
#   python -m benchmarks.launch_overhead with OVERHEAD_ARGS, e.g. --profile), decode (where decode's time goes:
#   benchmarks/probes/decode_breakdown.py with DECODE_ARGS, e.g. "--variants @benchmarks/variant_sets/FILE.json"), hf (real transformers models,
#   python -m benchmarks.hf_models: out of the box, then a HF_SEARCH_MINUTES search per model when > 0 (default 0:
#   the out-of-box phase alone, ~5 min; HF_ARGS e.g. "--quick" ~2 min on an H100, or "--cases mistral-window" to search one
#   model per device call).
# The GPU image lacks diskcache and platformdirs: carry them as wheels in .whl/ (pure Python), made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diskcache platformdirs
set -uo pipefail
OUT=${OUT:-/tmp/avo-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# --upgrade: a warm host keeps /tmp/site between calls, and pip leaves an installed package alone without it
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . >/dev/null
# transformers for the hf step, when the image lacks it: wheels in .whl-hf/ (made here with pip download for cp312),
# installed by pip's resolver so that what the image already has (numpy, torch) is kept.
if [ -d .whl-hf ] && ! python3 -c "import transformers" 2>/dev/null; then
  python3 -m pip install -q --user --break-system-packages --no-index --no-compile --find-links .whl-hf transformers 2>&1 | tail -2
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-store} AVO_USE_SHIPPED=${AVO_USE_SHIPPED:-0}  # 1: read cache/ bundles too
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
for step in "$@"; do
  echo "=== $step ($(date +%T))"
  case "$step" in
    tests) python3 -m pytest -q -m gpu -p no:cacheprovider ${GPU_TESTS:-tests/test_gpu_kernels.py tests/test_gpu_backend.py tests/test_anticheat.py} -p no:logging > "$OUT/gpu-tests.log" 2>&1; grep -E "^(FAILED|ERROR|E  )|passed|failed" "$OUT/gpu-tests.log" | tail -15 ;;
    attention) python3 -m benchmarks.attention --suite "${ATTN_SUITE:-issue7}" --out "$OUT" ${ATTN_ARGS:-} > "$OUT/attention.log" 2>&1; tail -40 "$OUT/attention.log" ;;
    models*) python3 -m benchmarks.models ${MODEL_CASES:+--cases "$MODEL_CASES"} ${MODEL_ARGS:-} --out "$OUT" > "$OUT/$step.log" 2>&1; grep -v Warning "$OUT/$step.log" | tail -24 ;;
    hf) python3 -m benchmarks.hf_models --out "$OUT" --search-minutes "${HF_SEARCH_MINUTES:-0}" ${HF_ARGS:-} > "$OUT/hf.log" 2>&1
        grep -v Warning "$OUT/hf.log" | tail -40 ;;
    decode) python3 -m benchmarks.probes.decode_breakdown ${DECODE_ARGS:-} > "$OUT/decode.log" 2>&1; tail -16 "$OUT/decode.log" ;;
    overhead) python3 -m benchmarks.launch_overhead --out "$OUT" ${OVERHEAD_ARGS:-} > "$OUT/overhead.log" 2>&1; tail -12 "$OUT/overhead.log" ;;
    variants) python3 -m benchmarks.variants --out "$OUT" ${VARIANT_ARGS:-} > "$OUT/variants.log" 2>&1; tail -12 "$OUT/variants.log" ;;
    variants=*) # A named A/B: variants=NAME runs variants.py with $VARIANT_ARGS_NAME ('-' in NAME read as '_').
              name=${step#variants=}; var="VARIANT_ARGS_${name//-/_}"
              python3 -m benchmarks.variants --out "$OUT" --stem "variants-$name" ${!var:-} > "$OUT/variants-$name.log" 2>&1
              tail -12 "$OUT/variants-$name.log" ;;
    variants-training) python3 -m benchmarks.variants --training --out "$OUT" ${VARIANT_TRAIN_ARGS:-} > "$OUT/variants-training.log" 2>&1; tail -12 "$OUT/variants-training.log" ;;
    sanity) python3 -m benchmarks.sanity > "$OUT/sanity.log" 2>&1; rc=$?; tail -12 "$OUT/sanity.log"; [ $rc = 0 ] || exit 3 ;;
    sanity-large) python3 -m benchmarks.sanity --large > "$OUT/sanity-large.log" 2>&1; tail -6 "$OUT/sanity-large.log" ;;
    campaign) # Run or resume (the newest unfinished run) the campaign for one slice of CAMPAIGN_SLICE minutes: the slice
              # ends between batches, promotes its best into this host's store (exported by the export step) and
              # leaves the run paused; the database comes back in $OUT for the next slice, on whatever host.
            DB=${CAMPAIGN_DB:-search/runs/h100-core.db}; mkdir -p "$(dirname "$DB")"
            SLICE=${CAMPAIGN_SLICE:-7}
            state=$(python3 - "$DB" <<'PY'
import sys
from pathlib import Path
from avo_inductor.search.database import SearchDatabase
from avo_inductor.search.runner import latest_unfinished
from avo_inductor.spec import HardwareKey
path = Path(sys.argv[1])
db = SearchDatabase(path) if path.exists() else None
runs = db.runs() if db else []
try:  # a run is resumed on its own kind of GPU only: another card's open run means a new run here
    latest_unfinished(db, HardwareKey.current()) if db else None
    print("resume" if db else "new")
except ValueError:
    print("done" if runs and all(r.status == "finished" for r in runs) else "new")
PY
)
            echo "campaign state: $state ($DB), slice ${SLICE} min"
            # timeout: a hard stop (promotion included) if a worker hangs past the slice; SIGINT re-queues in-flight work.
            # CAMPAIGN_PROMOTE_S: time after the slice for promotion, ~30 s a winner on an H100 (80 timing rounds, the
            # checks, the baselines); winners are stored one by one, so a hard stop keeps those already re-measured.
            hard=$(python3 -c "print(int(float('$SLICE') * 60 + ${CAMPAIGN_PROMOTE_S:-240}))")
            # AVO_USE_SHIPPED=1: a winner an earlier slice shipped (in cache/) is found in the store, so this slice's
            # promotion does not re-measure it (search/engine.py _decided); the export step still reads the store alone.
            case "$state" in
              new) AVO_USE_SHIPPED=1 timeout -s INT "$hard" python3 -m avo_inductor.search run --campaign "${CAMPAIGN:-search/h100-core.toml}" --db "$DB" --slice-minutes "$SLICE" ${CAMPAIGN_ARGS:-} > "$OUT/campaign.log" 2>&1 ;;
              resume) AVO_USE_SHIPPED=1 timeout -s INT "$hard" python3 -m avo_inductor.search resume latest --db "$DB" --slice-minutes "$SLICE" > "$OUT/campaign.log" 2>&1 ;;
            esac
            echo "exit $?"; grep -E "stored|kept out|stopped|interrupted|error" "$OUT/campaign.log" | tail -25
            python3 -m avo_inductor.search status --db "$DB" 2>&1 | tee "$OUT/campaign-status.txt" | tail -25
            python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()" "$DB"
            cp "$DB" "${DB%.db}.jsonl" "$OUT/" 2>/dev/null ;;
    export) # The promoted records of this host's store as a bundle (unsigned: the repository is its provenance).
            python3 -m avo_inductor.cache ls 2>&1 | tee "$OUT/store.txt" | tail -25
            python3 -m avo_inductor.cache export -o "$OUT/bundle.tar.gz" 2>&1 | tail -3
            python3 -m avo_inductor.cache verify "$OUT/bundle.tar.gz" 2>&1 | tail -3 ;;
    search) timeout 390 python3 -m avo_inductor.search run --campaign search/h100-smoke.toml --budget-minutes 5 2>&1 | tail -30 | tee "$OUT/search.log"
            python3 -m avo_inductor.search status 2>&1 | tail -20 | tee -a "$OUT/search.log"
            cp "$AVO_CACHE_DIR"/search.db* "$OUT/" 2>/dev/null; ls "$AVO_CACHE_DIR" ;;
    *) echo "unknown step $step" ;;
  esac
done
# At most 8 files come back from a device call: the logs travel as one archive.
(cd "$OUT" && ls ./*.log ./*.txt >/dev/null 2>&1 && tar czf logs.tar.gz ./*.log ./*.txt && rm -f ./*.log ./*.txt)
ls "$OUT"
