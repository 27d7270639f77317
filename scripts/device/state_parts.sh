#!/usr/bin/env bash
# A portable state (checkpoints/NAME: ~57 MB) through uploads of at most 64 MiB that also
# carry code, the ASR and, on the first call, the synthesizer .debs and wheels: the state
# travels as a tar in parts over two or more calls, checked by its sha256 on arrival.
#   here:  scripts/device/state_parts.sh split checkpoints/codec_v2 MB [MB ...]
#          → .carry/a/codec_v2.tar.part-aa (the first MB), .carry/b/codec_v2.tar.part-ab (the
#            next MB), ..., the last folder the rest; each folder with codec_v2.tar.sha256;
#            name .carry/a in the first call's carry, .carry/b in the second's, ...
#   there: source it (phase_v2.sh does): collect_parts copies .carry/*/ into $W/parts (kept
#          while the machine is warm); assembled_state NAME prints the directory of NAME's
#          state once every part has arrived and the checksum matches, nothing before
# A single file travels the same way as FILE.part-* + FILE.sha256 (what split_file writes, e.g.
# torch.compile's cache returned by phase_v2.sh EMA_OUT=1): assembled_file FILE DEST writes
# DEST once every part is there and the checksum matches.
set -uo pipefail

collect_parts() {
  mkdir -p "$W/parts"
  local d
  for d in .carry/*/; do [ -d "$d" ] && cp -n "$d"* "$W/parts/" 2>/dev/null; done
  return 0
}

# parts_complete FILE: every part of FILE (FILE.part-*) is in $W/parts and they match
# FILE.sha256
parts_complete() {
  local want got
  [ -f "$W/parts/$1.sha256" ] || return 1
  want=$(cut -d' ' -f1 "$W/parts/$1.sha256")
  got=$(cat "$W/parts/$1".part-* 2>/dev/null | sha256sum | cut -d' ' -f1)
  [ "$want" = "$got" ]
}

assembled_state() {
  local name=$1 dest=$W/in/$1
  [ -f "$dest/state.json" ] && { echo "$dest"; return 0; }
  parts_complete "$name.tar" || return 1
  mkdir -p "$W/in"
  cat "$W/parts/$name".tar.part-* | tar x -C "$W/in" && [ -f "$dest/state.json" ] && echo "$dest"
}

# split_file SRC OUTDIR: SRC as OUTDIR/NAME.part-* (15 MiB each) and OUTDIR/NAME.sha256
split_file() {
  local name; name=$(basename "$1")
  rm -f "$2/$name".part-* "$2/$name.sha256"
  split -b 15M "$1" "$2/$name.part-" && (cd "$(dirname "$1")" && sha256sum "$name") \
    > "$2/$name.sha256"
}

assembled_file() {
  parts_complete "$1" || return 1
  cat "$W/parts/$1".part-* > "$2.tmp" && mv "$2.tmp" "$2"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  [ "${1:-}" = split ] || { echo "usage: $0 split DIR MB [MB ...]" >&2; exit 2; }
  SRC=${2:?state directory}; shift 2
  [ $# -ge 1 ] || { echo "usage: $0 split DIR MB [MB ...]" >&2; exit 2; }
  [ $# -le 7 ] || { echo "at most 7 sizes (8 parts)" >&2; exit 2; }
  for mb in "$@"; do
    [[ "$mb" =~ ^[1-9][0-9]*$ ]] || { echo "part sizes are whole MB > 0, got $mb" >&2; exit 2; }
  done
  [ -f "$SRC/state.json" ] || { echo "$SRC: not a portable state (no state.json)" >&2; exit 2; }
  NAME=$(basename "$SRC")
  TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
  tar cf "$TMP/$NAME.tar" -C "$(dirname "$SRC")" "$NAME"
  (cd "$TMP" && sha256sum "$NAME.tar" > "$NAME.tar.sha256")
  TOTAL=$(stat -c %s "$TMP/$NAME.tar")
  SUM=0; for mb in "$@"; do SUM=$(( SUM + mb * 1000000 )); done
  [ "$SUM" -lt "$TOTAL" ] || { echo "the parts ($SUM bytes) leave nothing of the state" \
    "($TOTAL bytes) for the last one" >&2; exit 2; }
  LETTERS=(a b c d e f g h)
  OFF=0; I=0
  rm -f .carry/*/"$NAME".tar.*
  for mb in "$@" rest; do
    L=${LETTERS[$I]}
    if [ "$mb" = rest ]; then N=$(( TOTAL - OFF )); else N=$(( mb * 1000000 )); fi
    mkdir -p ".carry/$L"
    tail -c +"$(( OFF + 1 ))" "$TMP/$NAME.tar" | head -c "$N" > ".carry/$L/$NAME.tar.part-a$L"
    cp "$TMP/$NAME.tar.sha256" ".carry/$L/"
    OFF=$(( OFF + N )); I=$(( I + 1 ))
  done
  du -b .carry/*/"$NAME".tar.part-*
fi
