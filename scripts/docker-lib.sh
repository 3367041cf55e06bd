# Sourced by scripts/docker-images.sh and scripts/docker-bento.sh.
# start_wheelhouse: fetch the torch wheels (for CPython 3.11 / glibc x86_64) once into
# build/wheelhouse with the host's pip (local disk or PyPI) and serve them on 127.0.0.1 for
# builds run with --network host. Sets WHEELHOUSE_URL (empty if the wheels cannot be had) and
# stops the server when the calling script exits.
start_wheelhouse() {
  local root="$1" torch="$2" torchvision="$3" py tag port
  local wheelhouse="$root/build/wheelhouse"
  WHEELHOUSE_URL=""
  py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
  local platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_25 manylinux_2_18 manylinux_2_17 \
             manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  echo "wheelhouse: torch $torch, torchvision $torchvision into $wheelhouse (kept for rebuilds)" >&2
  if ! "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: \
       --python-version 3.11 --implementation cp "${platforms[@]}" \
       -d "$wheelhouse" "torch==$torch" "torchvision==$torchvision" \
       2> >(grep -v "^WARNING: Location" >&2); then
    echo "wheelhouse: the host's pip could not fetch them; builds use the package index" >&2
    return 0
  fi
  # A fixed port: the URL is a build argument, so it must not change or the torch layer's build
  # cache is lost. A wheelhouse already served there (a parallel build) is reused.
  port="${CATSDOGS_WHEELHOUSE_PORT:-38451}"
  if ! "$py" -c "import urllib.request as u; assert b'torch-' in u.urlopen('http://127.0.0.1:$port/', timeout=3).read()" 2>/dev/null; then
    "$py" -m http.server --bind 127.0.0.1 --directory "$wheelhouse" "$port" >/dev/null 2>&1 &
    WHEELHOUSE_PID=$!
    trap 'kill "$WHEELHOUSE_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 1 50); do
      "$py" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
      sleep 0.2
    done
    kill -0 "$WHEELHOUSE_PID" 2>/dev/null || { echo "wheelhouse: port $port is taken; set CATSDOGS_WHEELHOUSE_PORT" >&2; return 1; }
  fi
  WHEELHOUSE_URL="http://127.0.0.1:$port/"
}

# require_disk GIB WHAT: stop with a one-line reason when the Docker engine's data directory has
# less than GIB GiB free (a build that runs out of space fails deep inside pip, e.g. while
# unpacking the CUDA wheels that torch pulls in, and leaves half-built layers behind).
require_disk() {
  local need="$1" what="$2" root free
  root="$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || true)"
  [ -d "$root" ] || root=/var/lib/docker
  [ -d "$root" ] || root=/
  free=$(( $(df -Pk "$root" | awk 'NR==2 {print $4}') / 1048576 ))
  if [ "$free" -lt "$need" ]; then
    echo "$what needs about $need GiB free under $root; $free GiB are free (docker system df shows what Docker holds)" >&2
    exit 1
  fi
}
