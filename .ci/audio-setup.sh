#!/usr/bin/env bash
# Give PortAudio a real-time virtual sound device on a headless Debian 12 CI machine, so the
# device tests in tests/test_audio.py exercise the real callback path (research/audio.md §2, §7).
#
#   PulseAudio daemon with a null sink "spk" and null source "mic" at 24 kHz mono, as defaults;
#   a 20 ms reader on spk.monitor keeps the null sink at low latency (else it idles at 2 s
#   and new streams stall 0.4-1.9 s). Also installs espeak-ng for simulator voices.
#
# Idempotent (a second run finds everything up and only prints). Never fails the build: when
# something cannot be set up it says why and exits 0, and the device tests skip.
# The daemon and reader stay up for the job; `audio-setup.sh --stop` ends them (pacat by its PID
# in $STATE, the daemon with `pulseaudio --kill` only if this script started it).
set -u
STATE=${AUDIO_STATE_DIR:-/tmp/engine-audio}
PACKAGES=(libportaudio2 pulseaudio libasound2-plugins espeak-ng)
started=$(date +%s%N)

say() { echo "audio-setup: $*"; }
give_up() { say "no virtual sound device: $*; device tests will skip"; exit 0; }

if [ "${1:-}" = --stop ]; then  # end of job: stop what we started, by PID
    [ -f "$STATE/pacat.pid" ] && kill "$(cat "$STATE/pacat.pid")" 2>/dev/null
    rm -f "$STATE/pacat.pid"
    [ -f "$STATE/ours" ] && pulseaudio --kill 2>/dev/null  # only a daemon this script started
    rm -f "$STATE/ours"
    say "stopped"; exit 0
fi

SUDO=""
[ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && SUDO="sudo -n"; }

if ! dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1 &&
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${PACKAGES[@]}" >/dev/null 2>&1 ||
        give_up "apt-get install ${PACKAGES[*]} failed"
fi
mkdir -p "$STATE"

if ! pactl info >/dev/null 2>&1; then
    # Running as root prints "W: This program is not intended to be run as root": harmless.
    pulseaudio --daemonize=yes --exit-idle-time=-1 -n \
        --load=module-native-protocol-unix \
        --load="module-null-sink sink_name=spk rate=24000 channels=1" \
        --load="module-null-source source_name=mic rate=24000 channels=1 max_latency_msec=20" \
        >"$STATE/pulseaudio.log" 2>&1 || give_up "pulseaudio did not start ($(tail -n1 "$STATE/pulseaudio.log"))"
    touch "$STATE/ours"
    for _ in $(seq 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
    pactl info >/dev/null 2>&1 || give_up "pulseaudio does not answer pactl info after 5 s"
fi
pactl list short sinks | grep -q $'\tspk\t' || give_up "a PulseAudio server runs, but without the null sink spk"
pactl set-default-sink spk && pactl set-default-source mic || give_up "cannot make spk/mic the defaults"

if ! { [ -f "$STATE/pacat.pid" ] && kill -0 "$(cat "$STATE/pacat.pid")" 2>/dev/null; }; then
    # Own session, so it outlives the CI step that started it.
    setsid pacat -r -d spk.monitor --latency-msec=20 </dev/null >/dev/null 2>&1 &
    echo $! >"$STATE/pacat.pid"
fi
# The sink leaves its 2 s idle latency only when its current 2 s block has played out: wait for
# that by polling the reported latency instead of a fixed sleep.
latency_us() { pactl list sinks | awk '/^\tName: /{s=$2} s=="spk" && /^\tLatency: /{print $2; exit}'; }
for _ in $(seq 40); do [ "$(latency_us)" -lt 100000 ] 2>/dev/null && break; sleep 0.1; done

lat=$(latency_us); took=$(( ($(date +%s%N) - started) / 1000000 ))
say "PulseAudio $(pactl info | sed -n 's/^Server Version: //p'): default sink spk + source mic (null, 24 kHz mono)," \
    "monitor reader pid $(cat "$STATE/pacat.pid"), sink latency $(( ${lat:-0} / 1000 )) ms; took ${took} ms"
