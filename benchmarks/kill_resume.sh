#!/usr/bin/env bash
# Kill a real training run with SIGKILL mid-epoch, run the same command again, and compare its
# final metrics.json with an uninterrupted run of the same config (bundled SQuAD, packaged MiniLM).
#   bash benchmarks/kill_resume.sh [WORKDIR] [KILL_AFTER_STEPS]
set -u
work=${1:-$(mktemp -d)}
after=${2:-5}
sets=(--set data.max_train_questions=320 --set train.checkpoint_every=3 --set data.p_max_len=128 --set train.batch_size=32)
rm -rf "$work/cut" "$work/full"
onmkd-bench train "${sets[@]}" --out "$work/cut" > "$work/cut1.log" 2>&1 &
pid=$!
until [ -f "$work/cut/log.jsonl" ] && [ "$(wc -l < "$work/cut/log.jsonl")" -ge "$after" ]; do sleep 0.2; done
kill -9 "$pid"; wait "$pid" 2>/dev/null
echo "killed with SIGKILL after $(wc -l < "$work/cut/log.jsonl") logged steps; checkpoint: $(ls "$work/cut/checkpoint")"
onmkd-bench train "${sets[@]}" --out "$work/cut" > "$work/cut2.log" 2>&1
grep resuming "$work/cut2.log"
onmkd-bench train "${sets[@]}" --out "$work/full" > "$work/full.log" 2>&1
python - "$work" <<'PY'
import json, sys
w = sys.argv[1]
a, b = (json.load(open(f"{w}/{d}/metrics.json")) for d in ("cut", "full"))
steps = [json.loads(l)["step"] for l in open(f"{w}/cut/log.jsonl")]
print(f"resumed == uninterrupted: {a == b}; dev acc@20 {a['dev']['acc@20']:.6f} vs {b['dev']['acc@20']:.6f}; logged steps {steps}")
sys.exit(0 if a == b else 1)
PY
