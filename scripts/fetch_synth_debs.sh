#!/usr/bin/env bash
# Download (not install) the .deb files of our speech synthesizers and every shared library
# they need beyond glibc/libstdc++/libgcc, so they can run from a private prefix on a machine
# without apt or network (the GPU machine). Usage: scripts/fetch_synth_debs.sh DIR
# Then there: source scripts/device_synth_env.sh DIR
# How the library list is found: the engine packages are unpacked into a scratch prefix and
# `ldd` is run on the binaries and their libraries; every library that resolves outside the
# prefix (except the C/C++ runtime every CUDA image has) is mapped to its package with
# `dpkg -S`, downloaded and unpacked too, until nothing outside the prefix is needed.
#   scripts/fetch_synth_debs.sh DIR other [LANG,...]: instead, festival's voices of other
#   languages (data.synth.FESTIVAL_OTHER_VOICES) and their language files, data only (no
#   libraries), to unpack into the same prefix as DIR's; LANG picks languages (fi, it, ca,
#   cs; default all: ~53 MiB; fi,it,ca ~23 MiB, cs ~31 MiB, so that each fits an upload
#   beside the code). DIR/voices.txt names the voices DIR brings.
set -euo pipefail
DIR=${1:?usage: $0 DIR [other [LANG,...]]}
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
if [ "${2:-}" = other ]; then
  declare -A LANG_PKGS=(
    [fi]="festvox-suopuhe-common festvox-suopuhe-mv festvox-suopuhe-lj"
    [it]="festlex-ifd festvox-itapc16k festvox-italp16k"
    [ca]="festival-ca festvox-ca-ona-hts"
    [cs]="festival-czech festvox-czech-machac festvox-czech-dita festvox-czech-krb festvox-czech-ph")
  LANGS=${3:-fi,it,ca,cs}
  OTHER_PKGS=""
  for lang in ${LANGS//,/ }; do
    [ -n "${LANG_PKGS[$lang]:-}" ] || { echo "unknown language $lang (fi, it, ca, cs)" >&2; exit 2; }
    OTHER_PKGS="$OTHER_PKGS ${LANG_PKGS[$lang]}"
  done
  # the voices these packages bring, from the corpus builder's own table
  python3 -c "import sys; from flexicodec.data.synth import FESTIVAL_OTHER_VOICES as V
langs = sys.argv[1].split(',')
missing = sorted(set(V.values()) - {'fi', 'it', 'ca', 'cs'})
if missing: raise SystemExit(f'no packages known for the languages {missing}')
print('\n'.join(v for v, l in V.items() if l in langs))" "$LANGS" > "$DIR/voices.txt.tmp"
  cd "$DIR"
  rm -f "$DIR"/*.deb                   # DIR holds exactly the voices voices.txt names
  apt-get download $OTHER_PKGS 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
  for p in $OTHER_PKGS; do
    ls "$DIR/${p}"_*.deb >/dev/null 2>&1 || { echo "apt-get download $p failed" >&2; exit 1; }
  done
  mv "$DIR/voices.txt.tmp" "$DIR/voices.txt"
  echo "[fetch_synth_debs] $(ls "$DIR"/*.deb | wc -l) .deb files, $(du -ch "$DIR"/*.deb | tail -1 | cut -f1) in $DIR: voices $(tr '\n' ' ' < "$DIR/voices.txt")"
  exit 0
elif [ -n "${2:-}" ]; then
  echo "usage: $0 DIR [other [LANG,...]]" >&2; exit 2
fi
ENGINE_PKGS="espeak-ng libespeak-ng1 espeak-ng-data libpcaudio0 libsonic0 flite libflite1
festival libestools2.5 festlex-cmu festlex-poslex festvox-kallpc16k festvox-kdlpc16k
festvox-us-slt-hts"
# provided by any glibc-based CUDA/python image: never carried
BASE_RE='^(libc6|libgcc-s1|libstdc\+\+6|libcrypt1|zlib1g)(:amd64)?$'
cd "$DIR"
# apt-get download needs the _apt user to be able to write here, or runs unsandboxed (warns)
apt-get download $ENGINE_PKGS 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
SCRATCH=$(mktemp -d); trap 'rm -rf "$SCRATCH"' EXIT
unpack() { for d in "$DIR"/*.deb; do dpkg -x "$d" "$SCRATCH"; done; }
for round in 1 2 3 4 5; do
  unpack
  LIBS="$SCRATCH/usr/lib/x86_64-linux-gnu:$SCRATCH/lib/x86_64-linux-gnu"
  targets=$(ls "$SCRATCH"/usr/bin/{espeak-ng,flite,festival} \
            "$SCRATCH"/usr/lib/x86_64-linux-gnu/*.so* 2>/dev/null)
  outside=$(for t in $targets; do LD_LIBRARY_PATH=$LIBS ldd "$t" 2>/dev/null; done \
            | awk '/=> \//{print $3}' | grep -v "^$SCRATCH" | sort -u)
  need=""
  for lib in $outside; do
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -1 | cut -d: -f1) || true
    [ -z "$pkg" ] && pkg=$(dpkg -S "$lib" 2>/dev/null | head -1 | cut -d: -f1) || true
    [ -z "$pkg" ] && { echo "cannot map $lib to a package" >&2; exit 1; }
    [[ "$pkg" =~ $BASE_RE ]] && continue
    ls "$DIR/${pkg}"_*.deb >/dev/null 2>&1 || need="$need $pkg"
  done
  need=$(echo $need | tr ' ' '\n' | sort -u | tr '\n' ' ')
  [ -z "${need// }" ] && break
  echo "[fetch_synth_debs] round $round: libraries from:$need"
  apt-get download $need 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
done
# missing libraries (not found at all) are an error
missing=$(for t in $targets; do LD_LIBRARY_PATH=$LIBS ldd "$t" 2>/dev/null; done | grep "not found" | sort -u || true)
# (a library this machine lacks too cannot be mapped to its package: the synthesizers must be
# installed here first, scripts/setup.sh; DIR is incomplete until a run ends without this)
[ -n "$missing" ] && { echo "unresolved libraries (DIR $DIR is incomplete: install the" \
  "synthesizers on this machine first, scripts/setup.sh, and run this again): $missing" >&2
  exit 1; }
echo "[fetch_synth_debs] $(ls "$DIR"/*.deb | wc -l) .deb files, $(du -ch "$DIR"/*.deb | tail -1 | cut -f1) in $DIR"
