
[ "$(stat -c %u .)" = 0 ] || exit 20
[ -z "$(find . -maxdepth 0 -perm /022)" ] || exit 21
if [ -L "$1" ]; then exit 22; fi
if [ -e "$1" ] && [ ! -d "$1" ]; then exit 23; fi
if [ ! -d "$1" ]; then mkdir -m 0700 "$1"; chown "$2" "$1"; fi
