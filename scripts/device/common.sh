# Sourced by the device pipeline scripts: environment for one call on the lent GPU machine.
# The machine has no network and no apt: Python wheels travel in .whl/, synthesizer .debs in
# .debs/ (scripts/fetch_synth_debs.sh), both named in the run's `carry`.
set -uo pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-540}
# one deadline shared by every script of the call (export DEADLINE to chain scripts)
export DEADLINE=${DEADLINE:-$(( T0 + BUDGET ))}
left() { echo $(( DEADLINE - $(date +%s) )); }
left_min() { python3 -c "print(max(0.5, ($(left) - ${1:-30}) / 60))"; }
# SETS: config overrides for the call's trainer, space-separated SECTION.KEY=VALUE; SET_ARGS
# holds them as its --set arguments
SET_ARGS=()
for kv in ${SETS:-}; do SET_ARGS+=(--set "$kv"); done
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
SITE=
if command -v nvidia-smi >/dev/null; then       # carried packages only on the GPU machine
  # .whl/ is scripts/fetch_device_wheels.sh's output: cp312 wheels (pesq's built by it);
  # installed once per machine (/tmp survives between calls while the machine is warm)
  if [ -d .whl ] && [ ! -f /tmp/site/.installed ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --no-build-isolation --target /tmp/site .whl/* > /tmp/site_install.log 2>&1 \
      || { echo "wheel install failed:"; grep -i -m 8 -E "error|requires" /tmp/site_install.log; exit 1; }
    touch /tmp/site/.installed
  fi
  if [ -f /tmp/site/.installed ]; then
    SITE=:/tmp/site
    PYTHONPATH=/tmp/site python3 -c "import soundfile, soxr, datasets" \
      || { echo "carried packages do not import"; exit 1; }
  fi
fi
# the flexicodec package from this checkout, without installing it
python3 scripts/package_links.py /tmp/flexicodec_path >/dev/null || { echo "package links failed"; exit 1; }
export PYTHONPATH=/tmp/flexicodec_path$SITE
# the machine's work folder, absolute: scripts cd into it and still name paths under it
W=${W:-runs/device}
mkdir -p "$W" && W=$(cd "$W" && pwd)
# .debs_other*/ (scripts/fetch_synth_debs.sh DIR other [LANG,...]: festival's voices of other
# languages), in later calls than .debs/ when the upload is size-limited, join the same
# prefix; the voices each brings (its voices.txt) are remembered in $W/other_voices_arrived
for d in .debs_other*/; do
  [ -d "$d" ] || continue
  [ -f "$d/voices.txt" ] || { echo "$d has no voices.txt: fetch it again with" \
    "scripts/fetch_synth_debs.sh ${d%/} other"; exit 1; }
  [ -d .debs ] && cp -n "$d"*.deb .debs/ 2>/dev/null
  touch "$W/other_voices_arrived"
  sort -u "$d/voices.txt" "$W/other_voices_arrived" -o "$W/other_voices_arrived"
done
if [ -d .debs ] && [ -f scripts/device_synth_env.sh ]; then
  # shellcheck disable=SC1091
  source scripts/device_synth_env.sh .debs
fi
# parts of a portable state carried in .carry/*/ are kept on the machine by every call
# (scripts/device/state_parts.sh), whichever script the call runs
source scripts/device/state_parts.sh
collect_parts
OUT=${OUT:-$W/out}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
gpu_info() { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu="$1" --format=csv,noheader; }
# ensure_corpus DIR: build the default corpus of HOURS (default 24) h into DIR once per machine
# (DIR.done marks it complete; the builder itself resumes an interrupted build). With
# OTHER_VOICES=1 the build waits (returns 3) until every one of festival's voices of other
# languages (data.synth.FESTIVAL_OTHER_VOICES) has arrived (.debs_other*/, over one or more
# calls), so that the corpus has them all; a voice that arrived but is not usable is an error.
other_voices_missing() {    # other_voices_missing [CORPUS]: not installed here (not in CORPUS)
  python3 -c "import json, sys; from flexicodec.data.synth import FESTIVAL_OTHER_VOICES as V, list_speakers as L
have = ({s.rsplit('festival_', 1)[-1] for s in json.load(open(sys.argv[1] + '/corpus.json'))['speakers']}
        if len(sys.argv) > 1 else {s.voice for s in L(['festival'])})
print(' '.join(v for v in V if v not in have))" "$@"
}
build_corpus_into() {    # build_corpus_into DIR: the default corpus; DIR.done once complete
  python3 -m flexicodec.data.cli build-corpus --hours "${HOURS:-24}" --out "$1" --workers 16 \
    --no-progress > "$W/corpus_build.log" 2>&1
  local rc=$?
  tail -n 3 "$W/corpus_build.log"
  [ $rc = 0 ] && touch "$1.done"
  return $rc
}
ensure_corpus() {
  if [ "${OTHER_VOICES:-0}" = 1 ] && [ ! -f "$1.done" ]; then
    local missing arrived
    missing=$(other_voices_missing) || { log "cannot list the voices here"; return 1; }
    if [ -n "$missing" ]; then
      arrived=$(tr ' ' '\n' <<< "$missing" | grep -x -F -f "$W/other_voices_arrived" 2>/dev/null \
                | tr '\n' ' ')
      if [ -n "$arrived" ]; then
        log "OTHER_VOICES=1: ${arrived}arrived (.debs_other*) but are not usable here (are" \
          ".debs and the synthesizer prefix here? data.synth's warning above says more)"
        return 1
      fi
      log "OTHER_VOICES=1: the voices of other languages have not all arrived (missing:" \
        "$missing; carry the .debs_other* that brings them); no corpus yet"
      return 3
    fi
  fi
  if [ "${OTHER_VOICES:-0}" = 1 ] && [ -f "$1.done" ] && [ -n "$(other_voices_missing "$1")" ]; then
    log "OTHER_VOICES=1, but the corpus $1 here was built without the voices of other" \
      "languages: training on it as it is (remove $1 and $1.done to rebuild)"
  fi
  if [ ! -f "$1.done" ]; then
    log "building the corpus $1 (${HOURS:-24} h)"
    if ! build_corpus_into "$1" && grep -q "built with other settings" "$W/corpus_build.log"; then
      # an earlier call's build that stopped part-way with other settings (e.g. voices
      # missing then): nothing trains on a corpus before it is done, so it is rebuilt
      log "$1 is an unfinished build with other settings: removing it and building afresh"
      rm -rf "$1" && build_corpus_into "$1"
    fi
    [ -f "$1.done" ] && python3 -m flexicodec.data.cli stats "$1" \
      > "$OUT/$(basename "$1")_stats.json" 2>/dev/null
  fi
  [ -f "$1.done" ] || { log "no corpus $1"; return 1; }
}
# pack_codecs NAME=DIR ...: trained codecs, fp16 without their ASR copy
# (scripts/device/transport.py), as $W/pack/NAME.safetensors and, all in one tar, as 15 MiB
# parts $OUT/codecs.tar.part-* (here: cat parts | tar xz, then transport.py unpack).
pack_codecs() {
  mkdir -p "$W/pack"
  local names=() spec
  for spec in "$@"; do
    python3 scripts/device/transport.py pack "${spec#*=}" "$W/pack/${spec%%=*}.safetensors" \
      || return 1
    names+=("${spec%%=*}.safetensors")
  done
  (cd "$W/pack" && tar czf - "${names[@]}") | split -b 15M - "$OUT/codecs.tar.part-"
  ls -la "$OUT"
}
