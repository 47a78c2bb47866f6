#!/usr/bin/env sh
# Prints the path of a Python 3.10 interpreter that really runs (the TFX 1.16 stack resolves
# only on 3.10). A pyenv shim named python3.10 may exist and still fail, so each candidate is run.
runs_310() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }

for candidate in "${PYTHON310:-}" python3.10; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if runs_310 "$path"; then echo "$path"; exit 0; fi
done
roots=""
command -v pyenv >/dev/null 2>&1 && roots="$(pyenv root 2>/dev/null)"
for root in $roots "$HOME/.pyenv" /root/.pyenv /usr/local /opt/python; do
  for path in "$root"/versions/3.10*/bin/python "$root"/bin/python3.10; do
    if [ -x "$path" ] && runs_310 "$path"; then echo "$path"; exit 0; fi
  done
done
echo "error: no working Python 3.10 found. The TFX 1.16 stack installs only on Python 3.10." >&2
echo "       Install one (e.g. 'pyenv install 3.10.13', or your system's python3.10 package)," >&2
echo "       or point PYTHON310=/path/to/python3.10 at it, then run make again." >&2
exit 1
