# Source me: unpack the synthesizer .deb files of DIR (from scripts/fetch_synth_debs.sh) into a
# private prefix and export what the engines and data/synth.py need.
#   source scripts/device_synth_env.sh DIR [PREFIX]     (PREFIX default: DIR/prefix)
# Exports PATH, LD_LIBRARY_PATH, ESPEAK_DATA_PATH and FLEXICODEC_SYNTH_PREFIX (data/synth.py
# then runs every engine from the prefix; festival gets --libdir PREFIX/usr/share/festival).
_fs_dir=${1:?usage: source scripts/device_synth_env.sh DIR [PREFIX]}
_fs_dir=$(cd "$_fs_dir" && pwd)
_fs_prefix=${2:-$_fs_dir/prefix}
# each .deb once (a mark per file): .deb files added to DIR by a later call are unpacked then
mkdir -p "$_fs_prefix/.unpacked.d"
for _fs_deb in "$_fs_dir"/*.deb; do
  [ -f "$_fs_prefix/.unpacked.d/$(basename "$_fs_deb")" ] && continue
  dpkg -x "$_fs_deb" "$_fs_prefix" || { echo "dpkg -x $_fs_deb failed" >&2; return 1; }
  touch "$_fs_prefix/.unpacked.d/$(basename "$_fs_deb")"
done
export FLEXICODEC_SYNTH_PREFIX="$_fs_prefix"
export PATH="$_fs_prefix/usr/bin:$PATH"
export LD_LIBRARY_PATH="$_fs_prefix/usr/lib/x86_64-linux-gnu:$_fs_prefix/usr/lib/x86_64-linux-gnu/pulseaudio:$_fs_prefix/usr/lib:$_fs_prefix/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ESPEAK_DATA_PATH="$_fs_prefix/usr/lib/x86_64-linux-gnu/espeak-ng-data"
# festival: the binary's compiled-in libdir is /usr/share/festival; data/synth.py passes
# --libdir, and for hand use:  festival --libdir "$FESTIVAL_LIBDIR"
export FESTIVAL_LIBDIR="$_fs_prefix/usr/share/festival"
export FESTLIBDIR="$FESTIVAL_LIBDIR"
# festival reads init.scm from its compiled-in libdir before --libdir takes effect; on a
# machine without a system festival (the GPU machine) point that path at the prefix.
if [ ! -e /usr/share/festival ] && [ -w /usr/share ]; then
  ln -s "$FESTIVAL_LIBDIR" /usr/share/festival
fi
echo "[device_synth_env] engines from $_fs_prefix: $(ls "$_fs_prefix/usr/bin" | tr '\n' ' ')"
unset _fs_dir _fs_prefix _fs_deb
