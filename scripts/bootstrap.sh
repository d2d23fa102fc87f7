#!/usr/bin/env bash
# One entry point for the README's two commands on a fresh Debian/Ubuntu machine:
#   scripts/bootstrap.sh demo [ARGS]   install everything, then run `continuum demo`
#   scripts/bootstrap.sh test [ARGS]   install what tests need, then run the whole suite
#                                      (first the core and edge unit tests on Python 3.10)
# Idempotent: a second run reuses .venv and skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in
  demo|test) shift ;;
  *) echo "usage: scripts/bootstrap.sh demo|test [args...]" >&2; exit 2 ;;
esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# The broker comes from Debian's packages; the tests and the demo start their own
# mosquitto process on a free loopback port, so the system service is not needed.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "==> installing mosquitto from Debian's packages"
  apt_install mosquitto
fi

# The PostgreSQL registry's tests run a real server: like mosquitto, they start their own
# (initdb into a temporary directory, a free loopback port), so only the binaries are needed;
# the cluster the package may set up on port 5432 is not used. The demo runs on SQLite.
if [ "$mode" = test ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  echo "==> installing PostgreSQL from Debian's packages (for the registry's tests)"
  apt_install postgresql
fi

# The HPC path's tests run a real single-node Slurm (slurmctld + slurmd + munge) the way the
# tests run mosquitto: their own config and ports in a temporary folder, no system service.
if [ "$mode" = test ] && ! command -v sbatch >/dev/null 2>&1; then
  echo "==> installing Slurm and munge from Debian's packages (for the HPC tests)"
  apt_install slurm-wlm munge
fi

# The video source's tests serve a clip over RTSP with GStreamer's RTSP server, driven by
# Debian's own python3 (python3-gi is built for it); plugins-good has the Matroska demuxer
# and the H.264 payloader it uses, plugins-ugly x264enc for a live test pattern.
if [ "$mode" = test ] && ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null; then
  echo "==> installing GStreamer's RTSP server from Debian's packages (for the video tests)"
  apt_install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
    gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PY"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    # Debian/Ubuntu ship venv separately: python3.11-venv for that interpreter,
    # python3-venv where python3.11 is the system python.
    apt_install "$(basename "$PY")-venv" 2>/dev/null || apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi

stamp=".venv/.continuum-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing continuum and its dependencies into .venv (about a minute)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0 is pinned in pyproject: pip takes the CPU wheel, not a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi

# Tests lint every /metrics endpoint and the deploy/ rules with Prometheus' own promtool.
# Only the binary is taken from Debian's prometheus package: installing the package would
# also enable a Prometheus server on :9090.
if [ "$mode" = test ] && ! command -v promtool >/dev/null 2>&1 && [ ! -x .venv/bin/promtool ]; then
  echo "==> taking promtool from Debian's prometheus package"
  tmp="$(mktemp -d)"
  if (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
    || { as_root apt-get update -qq && (cd "$tmp" && apt-get download prometheus >/dev/null); }; then
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" && cp "$tmp/root/usr/bin/promtool" .venv/bin/
  else
    echo "    (could not download it: the promtool checks will be skipped)" >&2
  fi
  rm -rf "$tmp"
fi

# The edge install (the agent and the core it imports) supports Python 3.10: JetPack 6 ships
# it. Where this machine has a 3.10 (system or pyenv), the core's and the agent's unit tests
# run on it first, in .venv310 with the edge extra only (the cloud extra needs 3.11+); a
# failure there fails this command. Deselected: the two checks that the cloud side's commands
# are listed, which an edge-only install rightly does not list.
find_python310() {
  local candidate
  for candidate in "${PYTHON310:-}" python3.10 \
    "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V | tail -n 1)"; do
    # A pyenv shim exists even when 3.10 is not selected: only an interpreter that runs counts.
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}
if [ "$mode" = test ]; then
  if PY310="$(find_python310)"; then
    if [ ! -x .venv310/bin/python ]; then
      echo "==> creating .venv310 with $PY310 (the edge install's Python 3.10 tests)"
      "$PY310" -m venv .venv310 || { rm -rf .venv310; apt_install python3.10-venv; "$PY310" -m venv .venv310; }
    fi
    stamp310=".venv310/.continuum-installed"
    if [ ! -f "$stamp310" ] || [ pyproject.toml -nt "$stamp310" ]; then
      echo "==> installing continuum[edge] and the edge tests' needs into .venv310"
      .venv310/bin/python -m pip install -q --upgrade pip
      # onnx builds the test models, scipy is the statistics' reference, scikit-learn holds
      # the digits (an older release on 3.10: the cloud extra's floor has no 3.10 build).
      .venv310/bin/python -m pip install -q -e '.[edge,video]' pytest pytest-timeout hypothesis \
        'onnx>=1.23' 'scipy>=1.11' scikit-learn
      touch "$stamp310"
    fi
    echo "==> core and edge unit tests on $(.venv310/bin/python --version)"
    # .venv/bin after .venv310/bin: promtool (copied there above) without the 3.11 python.
    PATH="$PWD/.venv310/bin:$PWD/.venv/bin:$PATH" .venv310/bin/python -m pytest -q \
      tests/unit/continuum tests/unit/edge_agent \
      --deselect tests/unit/continuum/cli/test_main.py::TestCommandsFromEntryPoints::test_the_sides_commands_are_assembled_from_entry_points \
      --deselect tests/unit/continuum/cli/test_main.py::TestCommandsFromEntryPoints::test_a_broken_plugin_is_reported_by_name_and_the_rest_work
  else
    echo "==> no Python 3.10 here (python3.10, pyenv or PYTHON310): the 3.10 edge tests are skipped"
  fi
fi

export PATH="$PWD/.venv/bin:$PATH"
case "$mode" in
  demo) exec continuum demo "$@" ;;
  test) exec python -m pytest "$@" ;;
esac
